use super::*;
use crate::journal::MemoryJournal;

/// A subsystem whose one message fails for real (a panic nobody injected).
struct Bomb;

impl Subsystem for Bomb {
    const NAME: &'static str = "bomb";
    type Deps = ();

    fn rebuild(_deps: &(), _journal: &Arc<dyn Journal>) -> Result<Self> {
        Ok(Bomb)
    }

    fn records(&self) -> usize {
        0
    }
}

struct Explode;

impl actix::Message for Explode {
    type Result = Result<()>;
}

/// A journal write that fails.
struct Poison;

impl actix::Message for Poison {
    type Result = Result<()>;
}

impl Handles<Poison> for Bomb {
    type Output = ();

    fn handle(&mut self, _msg: Poison, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        Reply::Now(Err(Error::Journal(crate::journal::JournalError::Storage(
            "disk full".into(),
        ))))
    }
}

impl Handles<Explode> for Bomb {
    type Output = ();

    fn handle(&mut self, _msg: Explode, _cx: Cx<'_, Self>) -> Reply<Self, ()> {
        panic!("a real failure");
    }
}

#[actix::test]
async fn an_actor_that_keeps_failing_is_held_back_and_reported_as_a_crash_loop() {
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let mut registry = Registry::default();
    let bomb = spawn::<Bomb>((), &journal, &mut registry);
    let running = |registry: &Registry| {
        registry
            .get("bomb")
            .is_some_and(|s| s.status == ActorStatus::Running)
    };
    for i in 0..registry::CRASH_LOOP_FAILURES {
        for _ in 0..200 {
            if running(&registry) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            running(&registry),
            "restarted at once before the loop ({i})"
        );
        assert!(registry.crash_looping().is_empty());
        let err = bomb.call(Explode).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
    }
    // The fifth failure in the window: the restart waits, calls meanwhile
    // are Unavailable, and the loop is reported.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(registry.crash_looping(), vec!["bomb"]);
    let snap = registry.get("bomb").expect("cell");
    assert!(
        snap.crash_loop && snap.status != ActorStatus::Running,
        "{snap:?}"
    );
    let held = bomb.control(ControlOp::Ping).await.unwrap_err();
    assert!(matches!(held, Error::Unavailable(_)), "{held}");
    // After the pause it serves again.
    for _ in 0..200 {
        if running(&registry) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bomb.control(ControlOp::Ping)
        .await
        .expect("served after the pause");
    // Operators' kills are no failures.
    let before = registry.get("bomb").expect("cell").restarts;
    bomb.control(ControlOp::Panic(By::Operator))
        .await
        .unwrap_err();
    for _ in 0..100 {
        if registry.get("bomb").expect("cell").restarts > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(registry.get("bomb").expect("cell").restarts, before + 1);
    assert_eq!(
        bomb.cell_failures(),
        registry::CRASH_LOOP_FAILURES,
        "an injected panic is not counted as a failure"
    );
}

#[actix::test]
async fn a_journal_failure_restarts_the_actor_to_rebuild_its_state() {
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let mut registry = Registry::default();
    let bomb = spawn::<Bomb>((), &journal, &mut registry);
    let first = bomb.control(ControlOp::Ping).await.expect("ping");
    let err = bomb.call(Poison).await.unwrap_err();
    assert!(matches!(err, Error::Journal(_)), "{err}");
    let mut again = None;
    for _ in 0..200 {
        if let Ok(p) = bomb.control(ControlOp::Ping).await {
            if p.generation > first.generation {
                again = Some(p);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again = again.expect("rebuilt");
    assert_eq!(again.restarts_before, 1);
    assert_eq!(bomb.cell_failures(), 1, "counted as a failure");
}
