//! Test-only plugin for the outbound stages, doing what its settings say
//! per stage and logging what it was told:
//!
//! ```toml
//! [plugin.settings.defer]
//! when = "dest.test"      # only when a recipient contains this
//! verdict = "reroute"     # deliver: continue, reroute, hold, bounce, trap
//! route = "backup"        # defer: default, reroute, bounce
//! text = "a reason"       # bounce: send, suppress, explain, retry
//! [plugin.settings.delivered]   # delivered: log the delivery
//! ```

use std::collections::HashMap;

use mailgate_plugin_sdk::outbound::{BounceVerdict, DeferVerdict, DeliverVerdict, Delivery, Failure};
use mailgate_plugin_sdk::{NextHop, Plugin, Settings, export_plugin, log};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    verdict: Option<String>,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    smarthost: Option<String>,
    #[serde(default)]
    text: String,
}

impl Script {
    fn hop(&self) -> NextHop {
        match (&self.route, &self.smarthost) {
            (Some(name), _) => NextHop::Route(name.clone()),
            (None, Some(host)) => NextHop::Smarthost(host.clone()),
            (None, None) => NextHop::Route(String::new()),
        }
    }
}

struct Outbound {
    stages: HashMap<String, Script>,
}

impl Outbound {
    /// The `stage`'s script, when it applies to `delivery`.
    fn script(&self, stage: &str, delivery: &Delivery) -> Option<&Script> {
        let script = self.stages.get(stage)?;
        let applies = script
            .when
            .as_deref()
            .is_none_or(|w| delivery.recipients.iter().any(|r| r.contains(w)));
        applies.then_some(script)
    }
}

impl Plugin for Outbound {
    fn init(settings: &Settings) -> Result<Self, String> {
        Ok(Self {
            stages: settings.parse()?,
        })
    }

    fn on_deliver(&self, delivery: &Delivery) -> DeliverVerdict {
        let Some(script) = self.script("deliver", delivery) else {
            return DeliverVerdict::Continue;
        };
        match script.verdict.as_deref().unwrap_or("continue") {
            "reroute" => DeliverVerdict::Reroute(script.hop()),
            "hold" => DeliverVerdict::Hold(script.text.clone()),
            "bounce" => DeliverVerdict::Bounce(script.text.clone()),
            "trap" => std::process::abort(),
            _ => DeliverVerdict::Continue,
        }
    }

    fn on_defer(&self, delivery: &Delivery, failure: &Failure) -> DeferVerdict {
        let Some(script) = self.script("defer", delivery) else {
            return DeferVerdict::Default;
        };
        log::info(&format!(
            "defer of {} after {}: {}",
            delivery.recipients.join(","),
            delivery.destination,
            failure.text
        ));
        match script.verdict.as_deref().unwrap_or("default") {
            "reroute" => DeferVerdict::Reroute(script.hop()),
            "bounce" => DeferVerdict::Bounce(script.text.clone()),
            _ => DeferVerdict::Default,
        }
    }

    fn on_bounce(&self, delivery: &Delivery, failure: &Failure) -> BounceVerdict {
        let Some(script) = self.script("bounce", delivery) else {
            return BounceVerdict::Send;
        };
        log::info(&format!(
            "bounce for {} (permanent {}): {}",
            delivery.recipients.join(","),
            failure.permanent,
            failure.text
        ));
        match script.verdict.as_deref().unwrap_or("send") {
            "suppress" => BounceVerdict::Suppress,
            "explain" => BounceVerdict::Explain(script.text.clone()),
            "retry" => BounceVerdict::Retry,
            _ => BounceVerdict::Send,
        }
    }

    fn on_delivered(&self, delivery: &Delivery, reply: &str) {
        if self.script("delivered", delivery).is_some() {
            log::info(&format!(
                "delivered {} to {} via {} (attempt {}): {reply}",
                delivery.queue_id,
                delivery.recipients.join(","),
                delivery.destination,
                delivery.attempt
            ));
        }
    }
}

export_plugin!(Outbound);
