//! What the ImageActor works with that outlives its restarts: the content
//! store, the snapshots, the registry clients, the pulls in flight, and the
//! image configuration.

use super::content::ContentStore;
use super::flight::Flights;
use super::manifest::Platform;
use super::pull::Pulled;
use super::registry::{HostConfig, Registries};
use super::snapshots::Snapshots;
use crate::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The image half of config.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    /// berth's root: content and snapshots live below it.
    pub root: PathBuf,
    /// berth's volatile state: root filesystems are mounted below it.
    pub state: PathBuf,
    /// Per registry host: mirrors, insecure, CA.
    pub registries: BTreeMap<String, HostConfig>,
    /// A pull that receives nothing for this long fails.
    pub stall_timeout: Duration,
    /// Layers fetched at once by one pull.
    pub max_concurrent_downloads: usize,
    /// Pulls of different images at once; more wait their turn.
    pub max_concurrent_pulls: usize,
    /// A layer may unpack to this many times its compressed size (at
    /// least [`UNPACK_FLOOR`]); more is refused as a decompression bomb.
    /// 0: no bound.
    pub max_unpack_ratio: u64,
    /// The platform picked from multi-platform images.
    pub platform: Platform,
}

pub struct ImageBackend {
    pub config: ImageConfig,
    pub content: ContentStore,
    pub snapshots: Snapshots,
    pub registries: Registries,
    /// Pulls in flight, by reference: concurrent pulls share one.
    pub pulls: Arc<Flights<Pulled>>,
    /// Turns of the pulls of different images (`max_concurrent_pulls`).
    pub pull_turns: Arc<tokio::sync::Semaphore>,
    /// Layers being fetched and unpacked, by chain ID: images sharing a
    /// layer share its download.
    pub layers: Arc<Flights<()>>,
    /// Pulls hold it shared until their image is recorded; garbage
    /// collection takes it alone, so it never removes what a pull in flight
    /// has written but not yet recorded.
    pub gc_lock: Arc<tokio::sync::RwLock<()>>,
}

/// A layer may always unpack to this much, whatever its compressed size.
pub const UNPACK_FLOOR: u64 = 256 << 20;

/// The most a config blob may hold (real ones are a few KiB).
pub const CONFIG_MAX: u64 = 16 << 20;

impl ImageConfig {
    /// The most a layer of `compressed` bytes may unpack to, or None.
    pub fn unpack_limit(&self, compressed: u64) -> Option<u64> {
        (self.max_unpack_ratio > 0).then(|| {
            compressed
                .saturating_mul(self.max_unpack_ratio)
                .max(UNPACK_FLOOR)
        })
    }
}

impl ImageBackend {
    pub fn open(config: ImageConfig) -> Result<Arc<ImageBackend>> {
        Ok(Arc::new(ImageBackend {
            content: ContentStore::open(&config.root)?,
            snapshots: Snapshots::open(&config.root)?,
            registries: Registries::new(config.registries.clone()),
            pull_turns: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_pulls.max(1),
            )),
            pulls: Flights::new(),
            layers: Flights::new(),
            gc_lock: Arc::new(tokio::sync::RwLock::new(())),
            config,
        }))
    }
}
