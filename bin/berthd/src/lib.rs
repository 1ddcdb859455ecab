//! The parts of berthd that read outside data on their own: the
//! configuration file and the conversion of CRI requests into berth's
//! messages. The daemon (`main.rs`) and the fuzz targets (`fuzz/`) use
//! them.

pub mod config;
pub mod convert;
pub mod rates;
