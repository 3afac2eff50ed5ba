//! Hooks that do nothing (`mailgate:plugin/defaults`, since 0.2.0). A
//! plugin configured for a stage whose hook it does not implement (the
//! Rust SDK's default hooks) says so from inside that hook; the gateway
//! then stops calling the hook for the plugin, so the stage costs no
//! instance and no call. Only a call that answered `continue` without
//! changes counts, so a hook that ever does something is never skipped.

use std::sync::atomic::{AtomicU8, Ordering};

use tracing::info;

use super::bindings::mailgate::plugin::defaults;
use super::bindings::mailgate::plugin::types::{Outcome, Verdict};
use super::state::State;
use crate::smtp::session::Stage;

impl defaults::Host for State {
    async fn default_hook(&mut self) -> wasmtime::Result<()> {
        self.default_hook = true;
        Ok(())
    }
}

/// The inbound hooks of one loaded plugin found to do nothing, shared by
/// all its instances.
#[derive(Debug, Default)]
pub(super) struct DefaultHooks(AtomicU8);

impl DefaultHooks {
    /// True when the plugin's hook for `stage` is known to do nothing.
    pub(super) fn skips(&self, stage: Stage) -> bool {
        self.0.load(Ordering::Relaxed) & bit(stage) != 0
    }

    /// Notes the answer of a call to `plugin`'s hook for `stage`; `said`
    /// is whether the hook called `default-hook` during the call.
    pub(super) fn note(&self, plugin: &str, stage: Stage, said: bool, outcome: &Outcome) {
        if !said || !neutral(outcome) {
            return;
        }
        let before = self.0.fetch_or(bit(stage), Ordering::Relaxed);
        if before & bit(stage) == 0 {
            info!(
                plugin,
                stage = stage.name(),
                "plugin does not implement this hook; it is no longer called"
            );
        }
    }
}

fn bit(stage: Stage) -> u8 {
    1 << stage as u8
}

fn neutral(outcome: &Outcome) -> bool {
    matches!(outcome.verdict, Verdict::Continue) && outcome.modifications.is_empty()
}

#[cfg(test)]
mod tests {
    use super::super::bindings::mailgate::plugin::types::Modification;
    use super::*;

    fn answer(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            modifications: Vec::new(),
        }
    }

    #[test]
    fn only_a_neutral_answer_of_a_hook_that_said_so_is_skipped() {
        let hooks = DefaultHooks::default();
        hooks.note("p", Stage::Helo, false, &answer(Verdict::Continue));
        assert!(!hooks.skips(Stage::Helo), "the hook did not call default-hook");
        hooks.note("p", Stage::Mail, true, &answer(Verdict::Accept));
        assert!(!hooks.skips(Stage::Mail), "accept is not neutral");
        let mut changed = answer(Verdict::Continue);
        changed.modifications.push(Modification::RemoveHeader("X-Spam".into()));
        hooks.note("p", Stage::Rcpt, true, &changed);
        assert!(!hooks.skips(Stage::Rcpt), "a change is not neutral");
        hooks.note("p", Stage::Connect, true, &answer(Verdict::Continue));
        assert!(hooks.skips(Stage::Connect));
        for stage in [Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data] {
            assert!(!hooks.skips(stage), "{stage:?} is still called");
        }
    }
}
