//! The ContainerActor shell: routes messages to the verbs.

use super::store::ContainerRecord;
use crate::journal::{Journal, Table};
use crate::kernel::{Shell, Subsystem};
use crate::Result;
use std::sync::Arc;

pub type ContainerActor = Shell<Containers>;

pub struct Containers {
    pub(super) records: Table<ContainerRecord>,
}

impl Subsystem for Containers {
    const NAME: &'static str = "container";
    type Deps = ();

    fn rebuild(_deps: &(), journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Containers {
            records: Table::open(journal, Self::NAME)?,
        })
    }

    fn records(&self) -> usize {
        self.records.len()
    }
}
