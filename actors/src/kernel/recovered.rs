//! What an actor's recovery pass found: how many objects it kept as they
//! were and, one line each, what it had to finish or undo.

/// The outcome of one actor's recovery pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Objects found consistent and kept.
    pub kept: usize,
    /// What was repaired, one line each ("pod 3f2a…: half-made, undone").
    pub fixed: Vec<String>,
}

impl Recovered {
    pub fn fixed(&mut self, line: String) {
        tracing::info!(%line, "recovery");
        self.fixed.push(line);
    }
}

/// The first 12 characters of an ID, as in log lines and crictl.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Calls `f` until it answers something other than Unavailable (an actor
/// restarting, an object busy with another operation), backing off up to
/// about half a minute in all.
pub async fn patiently<T, F, Fut>(mut f: F) -> crate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::Result<T>>,
{
    let mut pause = std::time::Duration::from_millis(20);
    for _ in 0..40 {
        match f().await {
            Err(crate::Error::Unavailable(_)) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            other => return other,
        }
    }
    f().await
}

/// What a sweep did: the outcome for each record it released, and the
/// stray paths (owned by no record) it removed.
pub type Swept = (Vec<(String, crate::Result<()>)>, Vec<std::path::PathBuf>);

/// The objects still being made (`creating`: their IDs) that no call is
/// making any more: a restart cut their making short. Those named in
/// `reserved` (names to IDs of makings under way) or held in `busy` are
/// left alone; the others are claimed in `busy` for the pass that undoes
/// them, and answered.
pub fn claim_cut_short<'a>(
    creating: impl Iterator<Item = &'a str>,
    reserved: &std::collections::BTreeMap<String, String>,
    busy: &mut std::collections::BTreeSet<String>,
) -> Vec<String> {
    let cut: Vec<String> = creating
        .filter(|id| !reserved.values().any(|r| r == id) && !busy.contains(*id))
        .map(str::to_string)
        .collect();
    busy.extend(cut.iter().cloned());
    cut
}
