//! The SandboxActor shell: routes messages to the verbs.

use super::store::SandboxRecord;
use crate::journal::{Journal, Table};
use crate::kernel::{Shell, Subsystem};
use crate::Result;
use std::sync::Arc;

pub type SandboxActor = Shell<Sandboxes>;

pub struct Sandboxes {
    pub(super) records: Table<SandboxRecord>,
}

impl Subsystem for Sandboxes {
    const NAME: &'static str = "sandbox";
    type Deps = ();

    fn rebuild(_deps: &(), journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Sandboxes {
            records: Table::open(journal, Self::NAME)?,
        })
    }

    fn records(&self) -> usize {
        self.records.len()
    }
}
