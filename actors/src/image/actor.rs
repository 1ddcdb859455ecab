//! The ImageActor shell: routes messages to the verbs.

use super::store::ImageRecord;
use crate::journal::{Journal, Table};
use crate::kernel::{Shell, Subsystem};
use crate::Result;
use std::sync::Arc;

pub type ImageActor = Shell<Images>;

pub struct Images {
    pub(super) records: Table<ImageRecord>,
}

impl Subsystem for Images {
    const NAME: &'static str = "image";
    type Deps = ();

    fn rebuild(_deps: &(), journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Images {
            records: Table::open(journal, Self::NAME)?,
        })
    }

    fn records(&self) -> usize {
        self.records.len()
    }
}
