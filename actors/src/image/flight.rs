//! Single flight: concurrent requests for the same work (the same image,
//! the same layer) share one run of it.

use crate::{Error, Result};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

type Flight<T> = Shared<BoxFuture<'static, Result<T>>>;

pub struct Flights<T: Clone> {
    running: Mutex<HashMap<String, Flight<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Flights {
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Joins the work running under `key`, or starts `make()` as a task of
    /// its own (it goes on even if this caller goes away).
    pub fn join<F>(self: &Arc<Self>, key: &str, make: impl FnOnce() -> F) -> Flight<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = running.get(key) {
            return f.clone();
        }
        let task = tokio::spawn(make());
        let me = Arc::downgrade(self);
        let k = key.to_string();
        let flight = async move {
            let r = task
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("task failed: {e}"))));
            if let Some(me) = me.upgrade() {
                me.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&k);
            }
            r
        }
        .boxed()
        .shared();
        running.insert(key.to_string(), flight.clone());
        flight
    }

    pub fn len(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
