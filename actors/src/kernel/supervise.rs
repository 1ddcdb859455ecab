//! Supervision, written once for every subsystem.
//!
//! A subsystem is a plain struct ([`Subsystem`]) that answers messages
//! ([`Handles`]). [`Shell`] is the actix actor around it: it rebuilds the
//! state from the journal on every (re)start, counts what it handles in the
//! registry, and turns a panic in a handler into a supervised restart, so an
//! actor never dies for good and never answers `MailboxError` forever. The
//! message that was in the handler when it panicked fails as Unavailable;
//! messages still queued stay in the mailbox and are served after the
//! restart.
//!
//! ```text
//!   start ──> rebuild ok ──> Running ──panic / kill──> Restarting ──┐
//!                │                                                  │
//!                └─ rebuild failed: back off, stop ──> Restarting ──┴─> rebuild
//! ```

use super::registry::{ActorCell, ActorStatus};
use crate::journal::Journal;
use crate::{Error, Result};
use actix::prelude::*;
use futures::future::BoxFuture;
use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// The state and logic of one subsystem actor, free of actix.
pub trait Subsystem: Sized + Unpin + 'static {
    /// The actor's name in the registry and the admin API.
    const NAME: &'static str;
    /// What the subsystem needs besides the journal: configuration and the
    /// handles of the actors it talks to.
    type Deps: Clone + Unpin + Send + 'static;

    /// Builds the state from the journal: at start and after every restart.
    fn rebuild(deps: &Self::Deps, journal: &Arc<dyn Journal>) -> Result<Self>;

    /// How many journal records the state holds (shown by ping).
    fn records(&self) -> usize;

    /// Called once the state is built, with the actor's context: the place
    /// for timers. Runs again after every restart.
    fn started(&mut self, _ctx: &mut Context<Shell<Self>>) {}

    /// Called after a restart (not at the first start), once the state is
    /// built: the place to finish or undo what the previous incarnation
    /// left half-done. At berthd's start the kernel runs recovery instead,
    /// in order across the actors.
    fn restarted(&mut self, _ctx: &mut Context<Shell<Self>>) {}
}

/// What a handler gets besides the state.
pub struct Cx<'a, S: Subsystem> {
    pub deps: &'a S::Deps,
    pub journal: &'a Arc<dyn Journal>,
    pub ctx: &'a mut Context<Shell<S>>,
}

/// What a call caught in a restart of the actor `name` answers.
pub fn restarting(name: &str) -> Error {
    Error::Unavailable(format!("the {name} actor is restarting; retry"))
}

/// A handler's answer: now, or from work that runs off the actor.
pub enum Reply<S: Subsystem, T> {
    Now(Result<T>),
    Later(Pin<Box<dyn ActorFuture<Shell<S>, Output = Result<T>>>>),
}

use std::pin::Pin;

impl<S: Subsystem, T: 'static> Reply<S, T> {
    /// Work that runs off the actor (`work`), then `finish` on the actor's
    /// state with its result, for the answer: the pattern of every verb
    /// that journals what its work did. If the actor restarted meanwhile
    /// (the state `work` began from is gone), the call answers Unavailable
    /// and kubelet retries; the new incarnation's recovery finishes or
    /// undoes the work.
    pub fn later<W, F>(work: W, finish: F) -> Self
    where
        W: Future + 'static,
        F: FnOnce(&mut S, W::Output) -> Result<T> + 'static,
    {
        Reply::Later(Box::pin(actix::fut::wrap_future(work).map(
            move |done, shell: &mut Shell<S>, _| {
                let state = shell.state_mut().ok_or_else(|| restarting(S::NAME))?;
                finish(state, done)
            },
        )))
    }

    /// Work that runs off the actor and is the answer itself.
    pub fn off<W>(work: W) -> Self
    where
        W: Future<Output = Result<T>> + 'static,
    {
        Reply::Later(Box::pin(actix::fut::wrap_future(work)))
    }

    /// Runs the work with nobody waiting for the answer (recovery after a
    /// restart); an error is logged.
    pub fn detach(self, ctx: &mut Context<Shell<S>>, what: &'static str) {
        let log = move |r: Result<T>| {
            if let Err(e) = r {
                tracing::warn!(actor = S::NAME, error = %e, "{what} failed");
            }
        };
        match self {
            Reply::Now(r) => log(r),
            Reply::Later(fut) => {
                ctx.spawn(fut.map(move |r, _, _| log(r)));
            }
        }
    }
}

/// A subsystem answers message `M`.
pub trait Handles<M>: Subsystem
where
    M: Message,
{
    type Output;
    fn handle(&mut self, msg: M, cx: Cx<'_, Self>) -> Reply<Self, Self::Output>;
}

/// Puts `M` in a mailbox and keeps the registry's mailbox depth right: the
/// ticket is given back when the handler takes the message or when the
/// message is dropped unhandled.
pub struct Envelope<M> {
    msg: M,
    _ticket: Ticket,
}

impl<M: Message> Message for Envelope<M> {
    type Result = M::Result;
}

struct Ticket(Arc<ActorCell>);

impl Ticket {
    fn new(cell: &Arc<ActorCell>) -> Self {
        cell.enqueued();
        Ticket(cell.clone())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.dequeued();
    }
}

/// Who stopped an actor on purpose: it shows in the actor's last error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// An operator (`berthctl kill-actor`).
    Operator,
    /// Chaos mode's schedule.
    Chaos,
}

impl std::fmt::Display for By {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            By::Operator => "an operator",
            By::Chaos => "chaos mode",
        })
    }
}

/// Operator controls every actor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOp {
    /// Stop the actor as after a fatal error; the supervisor restarts it.
    Kill(By),
    /// Panic inside a handler (chaos and tests).
    Panic(By),
    /// A round trip through the mailbox.
    Ping,
}

/// What a control message answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlReply {
    pub restarts_before: u64,
    pub records: u64,
    pub generation: u64,
}

pub struct Control {
    op: ControlOp,
    _ticket: Ticket,
}

impl Message for Control {
    type Result = Result<ControlReply>;
}

/// The actix actor around a [`Subsystem`].
pub struct Shell<S: Subsystem> {
    state: Option<S>,
    deps: S::Deps,
    journal: Arc<dyn Journal>,
    cell: Arc<ActorCell>,
    generation: u64,
    failed_rebuilds: u32,
    /// The panic about to happen is an operator's (chaos), not a failure.
    injected: bool,
}

impl<S: Subsystem> Shell<S> {
    pub(crate) fn new(deps: S::Deps, journal: Arc<dyn Journal>, cell: Arc<ActorCell>) -> Self {
        Shell {
            state: None,
            deps,
            journal,
            cell,
            generation: 0,
            failed_rebuilds: 0,
            injected: false,
        }
    }

    /// The state, for futures that finish work off the actor.
    pub fn state_mut(&mut self) -> Option<&mut S> {
        self.state.as_mut()
    }

    fn unavailable(&self) -> Error {
        restarting(S::NAME)
    }

    /// Runs `f` on the state; a panic is caught, recorded and turned into a
    /// restart of this actor.
    fn guarded<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut S, Cx<'_, S>) -> Reply<S, T>,
    ) -> Reply<S, T> {
        let Some(state) = self.state.as_mut() else {
            self.cell.outcome(Some("called while restarting"));
            return Reply::Now(Err(self.unavailable()));
        };
        let cx = Cx {
            deps: &self.deps,
            journal: &self.journal,
            ctx,
        };
        match catch_unwind(AssertUnwindSafe(|| f(state, cx))) {
            Ok(Reply::Now(r)) => {
                self.cell
                    .outcome(r.as_ref().err().map(|e| e.to_string()).as_deref());
                self.poisoned(&r, ctx);
                Reply::Now(r)
            }
            Ok(Reply::Later(fut)) => Reply::Later(Box::pin(fut.map(|r, act: &mut Self, ctx| {
                act.cell
                    .outcome(r.as_ref().err().map(|e| e.to_string()).as_deref());
                act.poisoned(&r, ctx);
                r
            }))),
            Err(panic) => {
                let what = panic_message(&panic);
                tracing::error!(actor = S::NAME, panic = %what, "handler panicked; restarting the actor");
                self.cell.outcome(Some(&format!("panic: {what}")));
                if !std::mem::take(&mut self.injected) {
                    self.cell.failed_by_itself();
                }
                self.state = None;
                ctx.stop();
                Reply::Now(Err(Error::Unavailable(format!(
                    "the {} actor failed ({what}) and is restarting; retry",
                    S::NAME
                ))))
            }
        }
    }
}

impl<S: Subsystem> Shell<S> {
    /// A journal failure leaves the state maybe out of step with the disk:
    /// the actor is restarted, which rebuilds it from the journal.
    fn poisoned<T>(&mut self, r: &Result<T>, ctx: &mut Context<Self>) {
        if let Err(Error::Journal(e)) = r {
            if self.state.is_some() && e.uncertain() {
                tracing::error!(actor = S::NAME, error = %e, "journal failure; restarting the actor to rebuild its state");
                self.cell.failed_by_itself();
                self.state = None;
                ctx.stop();
            }
        }
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

impl<S: Subsystem> Actor for Shell<S> {
    type Context = Context<Self>;

    /// Runs at the first start and after every restart; in a crash loop
    /// the rebuild is held back (calls meanwhile get Unavailable).
    fn started(&mut self, ctx: &mut Context<Self>) {
        let pause = self.cell.backoff();
        if self.generation > 0 && !pause.is_zero() {
            tracing::error!(actor = S::NAME, ?pause, "crash loop: restart held back");
            ctx.run_later(pause, |act, ctx| act.rebuild(ctx));
        } else {
            self.rebuild(ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.cell.set_status(ActorStatus::Stopped);
    }
}

impl<S: Subsystem> Shell<S> {
    fn rebuild(&mut self, ctx: &mut Context<Self>) {
        match S::rebuild(&self.deps, &self.journal) {
            Ok(mut state) => {
                state.started(ctx);
                if self.generation > 0 {
                    state.restarted(ctx);
                }
                self.state = Some(state);
                self.generation += 1;
                self.failed_rebuilds = 0;
                self.cell.started();
                tracing::debug!(
                    actor = S::NAME,
                    generation = self.generation,
                    "actor running"
                );
            }
            Err(e) => {
                // A state that cannot be rebuilt is retried with a growing
                // pause instead of spinning.
                self.failed_rebuilds = self.failed_rebuilds.saturating_add(1);
                self.cell.failed_by_itself();
                let pause =
                    Duration::from_millis(100).saturating_mul(1 << self.failed_rebuilds.min(6));
                tracing::error!(actor = S::NAME, error = %e, ?pause, "rebuilding state failed");
                self.cell.set_error(&format!("rebuild: {e}"));
                ctx.run_later(pause, |_, ctx| ctx.stop());
            }
        }
    }
}

impl<S: Subsystem> Supervised for Shell<S> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.state = None;
        self.cell.restarting();
        tracing::warn!(
            actor = S::NAME,
            restarts = self.cell.restarts(),
            "actor restarting"
        );
    }
}

impl<S, M, T> Handler<Envelope<M>> for Shell<S>
where
    S: Handles<M, Output = T>,
    M: Message<Result = Result<T>>,
    T: 'static,
{
    type Result = ActorResponse<Self, Result<T>>;

    fn handle(&mut self, env: Envelope<M>, ctx: &mut Context<Self>) -> Self::Result {
        let Envelope { msg, _ticket } = env;
        drop(_ticket);
        match self.guarded(ctx, |state, cx| state.handle(msg, cx)) {
            Reply::Now(r) => ActorResponse::reply(r),
            Reply::Later(fut) => ActorResponse::r#async(fut),
        }
    }
}

impl<S: Subsystem> Handler<Control> for Shell<S> {
    type Result = Result<ControlReply>;

    fn handle(&mut self, msg: Control, ctx: &mut Context<Self>) -> Self::Result {
        let Control { op, _ticket } = msg;
        drop(_ticket);
        let restarts_before = self.cell.restarts();
        let generation = self.generation;
        self.injected = matches!(op, ControlOp::Panic(_));
        let reply = self.guarded(ctx, |state: &mut S, _| match op {
            ControlOp::Panic(by) => panic!("a panic injected by {by} into the {} actor", S::NAME),
            ControlOp::Ping | ControlOp::Kill(_) => Reply::Now(Ok(ControlReply {
                restarts_before,
                records: state.records() as u64,
                generation,
            })),
        });
        if let ControlOp::Kill(by) = op {
            tracing::warn!(actor = S::NAME, "killed by {by}");
            self.cell.set_error(&format!("killed by {by}"));
            self.state = None;
            ctx.stop();
        }
        match reply {
            Reply::Now(r) => r,
            Reply::Later(_) => Err(Error::Internal("control replies are immediate".into())),
        }
    }
}

/// The address of a supervised subsystem actor. Sending through a handle
/// keeps the registry's mailbox depth and maps a closed mailbox to
/// Unavailable.
pub struct Handle<S: Subsystem> {
    addr: Addr<Shell<S>>,
    cell: Arc<ActorCell>,
}

impl<S: Subsystem> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle {
            addr: self.addr.clone(),
            cell: self.cell.clone(),
        }
    }
}

fn mailbox_error(name: &str, e: MailboxError) -> Error {
    match e {
        MailboxError::Closed => Error::Unavailable(format!(
            "the {name} actor dropped the request while restarting; retry"
        )),
        MailboxError::Timeout => {
            Error::DeadlineExceeded(format!("the {name} actor did not answer in time"))
        }
    }
}

impl<S: Subsystem> Handle<S> {
    pub(crate) fn new(addr: Addr<Shell<S>>, cell: Arc<ActorCell>) -> Self {
        Handle { addr, cell }
    }

    /// Sends `msg` and waits for the subsystem's answer.
    pub async fn call<M, T>(&self, msg: M) -> Result<T>
    where
        S: Handles<M, Output = T>,
        M: Message<Result = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let env = Envelope {
            msg,
            _ticket: Ticket::new(&self.cell),
        };
        self.addr
            .send(env)
            .await
            .map_err(|e| mailbox_error(S::NAME, e))?
    }

    /// Failures counted towards a crash loop (tests).
    #[cfg(test)]
    pub(crate) fn cell_failures(&self) -> usize {
        self.cell.recent_failures()
    }

    pub async fn control(&self, op: ControlOp) -> Result<ControlReply> {
        let msg = Control {
            op,
            _ticket: Ticket::new(&self.cell),
        };
        self.addr
            .send(msg)
            .await
            .map_err(|e| mailbox_error(S::NAME, e))?
    }
}

/// Control of an actor by name, whatever its subsystem (admin API).
pub trait Controllable: Send + Sync {
    fn name(&self) -> &'static str;
    fn control(&self, op: ControlOp) -> BoxFuture<'static, Result<ControlReply>>;
}

impl<S: Subsystem> Controllable for Handle<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn control(&self, op: ControlOp) -> BoxFuture<'static, Result<ControlReply>> {
        let handle = self.clone();
        Box::pin(async move { handle.control(op).await })
    }
}
