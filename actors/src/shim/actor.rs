//! The ShimSupervisor shell: routes messages to the verbs.

use super::store::ShimRecord;
use crate::journal::{Journal, Table};
use crate::kernel::{Shell, Subsystem};
use crate::Result;
use std::sync::Arc;

pub type ShimSupervisor = Shell<Shims>;

pub struct Shims {
    pub(super) records: Table<ShimRecord>,
}

impl Subsystem for Shims {
    const NAME: &'static str = "shim";
    type Deps = ();

    fn rebuild(_deps: &(), journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Shims {
            records: Table::open(journal, Self::NAME)?,
        })
    }

    fn records(&self) -> usize {
        self.records.len()
    }
}
