//! Named steps of a long scenario test: the scenarios (the whole stack, upgrade, day two,
//! TLS) share one expensive install, so they stay one test each, but each is a sequence of
//! steps and a failure names the step that broke: `step <name> of <test> failed: ...`.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use futures_util::FutureExt as _;

/// Runs `f` as step `name` of the running test; a panic inside it is raised again with the
/// step and the test named (libtest names the test's thread after the test).
pub fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => fail(name, payload),
    }
}

/// [`step`] for an async step (a `#[tokio::test]`'s body runs on the test's thread too).
pub async fn step_async<T>(name: &str, f: impl Future<Output = T>) -> T {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(v) => v,
        Err(payload) => fail(name, payload),
    }
}

/// The name of the running test, as libtest gives it to the test's thread.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

/// The panic message of `payload` (a `&str` or a `String`, as `panic!` makes them).
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

fn fail(name: &str, payload: Box<dyn Any + Send>) -> ! {
    let msg = message(payload.as_ref());
    // A step inside a step: the inner one already said where; keep its words.
    if msg.starts_with("step ") {
        resume_unwind(payload);
    }
    panic!("step {name} of {} failed: {msg}", current_test());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_step_returns_its_value() {
        assert_eq!(step("add", || 1 + 1), 2);
    }

    #[test]
    fn a_failing_step_is_named_with_its_test() {
        let p = catch_unwind(|| step("count", || assert_eq!(1, 2, "one is not two"))).unwrap_err();
        let msg = message(p.as_ref());
        assert!(msg.starts_with("step count of "), "{msg}");
        assert!(
            msg.contains("a_failing_step_is_named_with_its_test"),
            "{msg}"
        );
        assert!(msg.contains("one is not two"), "{msg}");
    }

    #[test]
    fn an_inner_step_keeps_its_name() {
        let p = catch_unwind(|| step("outer", || step("inner", || panic!("boom")))).unwrap_err();
        let msg = message(p.as_ref());
        assert!(msg.starts_with("step inner of "), "{msg}");
    }

    #[tokio::test]
    async fn an_async_step_is_named_too() {
        let ok = step_async("fine", async { 7 }).await;
        assert_eq!(ok, 7);
        let p = AssertUnwindSafe(step_async("later", async { panic!("late") }))
            .catch_unwind()
            .await
            .unwrap_err();
        let msg = message(p.as_ref());
        assert!(msg.starts_with("step later of "), "{msg}");
        assert!(msg.contains("late"), "{msg}");
    }
}
