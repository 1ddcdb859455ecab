//! How one actor reaches another: a [`Link`] is the other actor's
//! [`Handle`] in berthd, or, in unit tests, [`Fakes`] that answer each
//! message type with a closure and keep a log of what was asked. An actor
//! holds links, never concrete actors, so its orchestration (rollbacks,
//! ordering, recovery decisions) is tested without runc, CNI or a shim.

use super::{Handle, Handles, Subsystem};
use crate::{Error, Result};
use actix::Message;
use futures::future::BoxFuture;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// The way to an actor of subsystem `S`.
pub enum Link<S: Subsystem> {
    Actor(Handle<S>),
    Fake(Arc<Fakes>, PhantomData<fn() -> S>),
}

impl<S: Subsystem> Clone for Link<S> {
    fn clone(&self) -> Self {
        match self {
            Link::Actor(h) => Link::Actor(h.clone()),
            Link::Fake(f, _) => Link::Fake(f.clone(), PhantomData),
        }
    }
}

impl<S: Subsystem> From<Handle<S>> for Link<S> {
    fn from(handle: Handle<S>) -> Self {
        Link::Actor(handle)
    }
}

impl<S: Subsystem> Link<S> {
    /// A link answered by `fakes` (tests).
    pub fn fake(fakes: &Arc<Fakes>) -> Self {
        Link::Fake(fakes.clone(), PhantomData)
    }

    /// Sends `msg` and waits for the answer, as [`Handle::call`] does.
    pub async fn call<M, T>(&self, msg: M) -> Result<T>
    where
        S: Handles<M, Output = T>,
        M: Message<Result = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Link::Actor(h) => h.call(msg).await,
            Link::Fake(f, _) => f.call(msg).await,
        }
    }
}

type Answer = Box<dyn Any + Send>;
type Responder = Box<dyn Fn(Box<dyn Any + Send>) -> BoxFuture<'static, Answer> + Send + Sync>;

/// Answers by message type, for unit tests; every call is logged by the
/// message's type name (its last path segment) and, where given, a label.
#[derive(Default)]
pub struct Fakes {
    responders: Mutex<HashMap<TypeId, Arc<Responder>>>,
    log: Mutex<Vec<String>>,
}

/// The last segment of a type's path: `CreateTask` for
/// `berth_actors::shim::messages::CreateTask`.
fn short_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

impl Fakes {
    pub fn new() -> Arc<Fakes> {
        Arc::new(Fakes::default())
    }

    /// Answers every `M` with `answer(msg)`.
    pub fn on<M, T>(self: &Arc<Self>, answer: impl Fn(M) -> Result<T> + Send + Sync + 'static)
    where
        M: Send + 'static,
        T: Send + 'static,
    {
        let answer = Arc::new(answer);
        self.on_async(move |msg: M| {
            let reply = answer(msg);
            Box::pin(async move { reply })
        });
    }

    /// Answers every `M` with what `answer(msg)` comes to: a fake that
    /// takes its time (held until the test lets it go).
    pub fn on_async<M, T>(
        self: &Arc<Self>,
        answer: impl Fn(M) -> BoxFuture<'static, Result<T>> + Send + Sync + 'static,
    ) where
        M: Send + 'static,
        T: Send + 'static,
    {
        let answer = Arc::new(answer);
        let responder: Responder = Box::new(move |msg: Box<dyn Any + Send>| {
            let answer = answer.clone();
            Box::pin(async move {
                let reply: Result<T> = match msg.downcast::<M>() {
                    Ok(msg) => answer(*msg).await,
                    Err(_) => Err(Error::Internal("a fake got another message".into())),
                };
                Box::new(reply) as Answer
            })
        });
        self.responders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(TypeId::of::<M>(), Arc::new(responder));
    }

    /// What was asked, in order (message type names).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many times `message` (a type name) was asked.
    pub fn asked(&self, message: &str) -> usize {
        self.log().iter().filter(|m| *m == message).count()
    }

    /// Whether `first` was first asked before `then` was.
    pub fn before(&self, first: &str, then: &str) -> bool {
        let log = self.log();
        let at = |m: &str| log.iter().position(|x| x == m);
        matches!((at(first), at(then)), (Some(a), Some(b)) if a < b)
    }

    /// Waits (up to 2 s) until `message` was asked `times` times.
    pub async fn wait_asked(&self, message: &str, times: usize) {
        for _ in 0..400 {
            if self.asked(message) >= times {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("{message} was not asked {times} times: {:?}", self.log());
    }

    async fn call<M, T>(&self, msg: M) -> Result<T>
    where
        M: Send + 'static,
        T: Send + 'static,
    {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(short_name::<M>().to_string());
        let responder = self
            .responders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&TypeId::of::<M>())
            .cloned();
        let Some(responder) = responder else {
            return Err(Error::Unavailable(format!(
                "no fake answers {}",
                short_name::<M>()
            )));
        };
        match responder(Box::new(msg)).await.downcast::<Result<T>>() {
            Ok(reply) => *reply,
            Err(_) => Err(Error::Internal(format!(
                "the fake for {} answers another type",
                short_name::<M>()
            ))),
        }
    }
}
