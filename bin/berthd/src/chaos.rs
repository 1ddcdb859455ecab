//! Chaos mode: a schedule that kills a random actor every interval, for
//! tests and for operators who want to exercise their nodes. A killed
//! actor is restarted by its supervisor and rebuilds its state; such kills
//! are not failures and never count towards a crash loop.

use berth_actors::kernel::ControlOp;
use berth_actors::node::Node;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a schedule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    /// Empty: every actor.
    pub actors: Vec<String>,
    pub op: ControlOp,
}

/// The schedule now and what it has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChaosState {
    pub schedule: Option<Schedule>,
    pub kills: u64,
    pub last_victim: String,
}

pub struct Chaos {
    node: Arc<Node>,
    state: Arc<Mutex<ChaosState>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A small random number from the kernel's pool (no crate needed for a
/// pick among five).
fn random() -> u64 {
    let mut b = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    match read {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => berth_actors::journal::unix_nanos() as u64,
    }
}

impl Chaos {
    pub fn new(node: Arc<Node>) -> Self {
        Chaos {
            node,
            state: Arc::default(),
            task: Mutex::new(None),
        }
    }

    pub fn state(&self) -> ChaosState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts `schedule`, replacing the one running. Unknown actor names
    /// are refused.
    pub fn start(&self, schedule: Schedule) -> berth_actors::Result<ChaosState> {
        let known = self.node.actor_names();
        if let Some(bad) = schedule
            .actors
            .iter()
            .find(|a| !known.contains(&a.as_str()))
        {
            return Err(berth_actors::kernel::unknown_actor(bad, &known));
        }
        if schedule.interval < Duration::from_millis(10) {
            return Err(berth_actors::Error::InvalidArgument(
                "chaos: the interval must be at least 10 ms".into(),
            ));
        }
        self.stop();
        let victims: Vec<String> = if schedule.actors.is_empty() {
            known.iter().map(|s| s.to_string()).collect()
        } else {
            schedule.actors.clone()
        };
        tracing::warn!(interval = ?schedule.interval, actors = ?victims, op = ?schedule.op, "chaos started");
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .schedule = Some(schedule.clone());
        let (node, state) = (self.node.clone(), self.state.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(schedule.interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let victim = &victims[(random() % victims.len() as u64) as usize];
                let done = match node.control(victim, schedule.op).await {
                    // The panic fails the control call itself, as it
                    // fails any call in the handler.
                    Err(berth_actors::Error::Unavailable(m)) if m.contains("panic injected") => {
                        Ok(())
                    }
                    other => other.map(|_| ()),
                };
                match done {
                    Ok(()) => {
                        tracing::info!(actor = %victim, "chaos: killed");
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        s.kills += 1;
                        s.last_victim = victim.clone();
                    }
                    // Still restarting from the last kill: try another
                    // time.
                    Err(e) => tracing::debug!(actor = %victim, error = %e, "chaos: no kill"),
                }
            }
        });
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(self.state())
    }

    pub fn stop(&self) -> ChaosState {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
            tracing::warn!("chaos stopped");
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.schedule = None;
        s.clone()
    }
}
