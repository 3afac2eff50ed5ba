//! webhook: tells an HTTP endpoint about deliveries, bounces and
//! quarantined messages. At the outbound stages `delivered`, `bounce` and
//! `quarantined` it queues an event (JSON) and
//! posts the queued events as one JSON array to `url` through the `http`
//! capability once `batch_size` of them are queued or the oldest has
//! waited `max_delay`. See README.md for the failure policy.

use std::cell::RefCell;

use mailgate_plugin_sdk::outbound::{BounceVerdict, Delivery, Failure};
use mailgate_plugin_sdk::{Plugin, Settings, clock, duration, export_plugin, http, log, metrics};
use serde::{Deserialize, Serialize};

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where events are posted.
    url: String,
    /// Post once this many events are queued.
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    /// ... or once the oldest has waited this long (checked at each event).
    #[serde(default = "default_max_delay", deserialize_with = "duration")]
    max_delay: std::time::Duration,
    /// At most this many events wait (the oldest go first, with a log line).
    #[serde(default = "default_max_queued")]
    max_queued: usize,
    #[serde(skip)]
    queue: RefCell<Vec<Event>>,
}

fn default_batch_size() -> usize {
    20
}

fn default_max_delay() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_max_queued() -> usize {
    1_000
}

/// One event as posted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// "delivered", "bounced" or "quarantined".
    pub event: &'static str,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The queue id.
    pub queue_id: String,
    /// The sender ("" for a bounce).
    pub sender: String,
    /// The recipients concerned.
    pub recipients: Vec<String>,
    /// Where they went.
    pub destination: String,
    /// The attempt.
    pub attempt: u32,
    /// The next hop's reply (delivered) or the failure (bounced).
    pub detail: String,
}

impl Webhook {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let webhook: Self = settings.parse()?;
        if !(webhook.url.starts_with("https://") || webhook.url.starts_with("http://")) {
            return Err(format!("url: {:?} is not an http(s) URL", webhook.url));
        }
        if webhook.batch_size == 0 || webhook.max_queued < webhook.batch_size {
            return Err("batch_size must be at least 1 and at most max_queued".into());
        }
        Ok(webhook)
    }

    /// Queues `event`, dropping the oldest past `max_queued`; returns the
    /// batch to post now, if it is time, and how many were dropped.
    pub fn push(&self, event: Event, now_ms: u64) -> (Option<Vec<Event>>, usize) {
        let mut queue = self.queue.borrow_mut();
        queue.push(event);
        let dropped = queue.len().saturating_sub(self.max_queued);
        queue.drain(..dropped);
        let oldest = queue.first().map_or(now_ms, |e| e.time_ms);
        let due = queue.len() >= self.batch_size
            || now_ms.saturating_sub(oldest) >= u64::try_from(self.max_delay.as_millis()).unwrap_or(u64::MAX);
        (due.then(|| queue.clone()), dropped)
    }

    /// The batch was posted: forget it.
    pub fn posted(&self, count: usize) {
        let mut queue = self.queue.borrow_mut();
        let count = count.min(queue.len());
        queue.drain(..count);
    }

    fn record(&self, event: Event) {
        let (batch, dropped) = self.push(event, clock::now_millis());
        if dropped > 0 {
            log::warn(&format!(
                "{dropped} webhook events dropped: more than {} waiting",
                self.max_queued
            ));
            metrics::count("webhook_events", &[("result", "dropped")]);
        }
        let Some(batch) = batch else {
            return;
        };
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        match http::post(&self.url, "application/json", &body) {
            Ok(response) if (200..300).contains(&response.status) => {
                self.posted(batch.len());
                metrics::count("webhook_posts", &[("result", "ok")]);
            }
            // Kept: the next event tries again with them.
            Ok(response) => {
                log::warn(&format!(
                    "webhook {} answered {}; {} events kept",
                    self.url,
                    response.status,
                    batch.len()
                ));
                metrics::count("webhook_posts", &[("result", "refused")]);
            }
            Err(e) => {
                log::warn(&format!(
                    "webhook {} failed: {e}; {} events kept",
                    self.url,
                    batch.len()
                ));
                metrics::count("webhook_posts", &[("result", "error")]);
            }
        }
    }
}

fn event(kind: &'static str, delivery: &Delivery, detail: &str) -> Event {
    Event {
        event: kind,
        time_ms: clock::now_millis(),
        queue_id: delivery.queue_id.clone(),
        sender: delivery.reverse_path.clone(),
        recipients: delivery.recipients.clone(),
        destination: delivery.destination.clone(),
        attempt: delivery.attempt,
        detail: detail.to_owned(),
    }
}

impl Plugin for Webhook {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_delivered(&self, delivery: &Delivery, reply: &str) {
        self.record(event("delivered", delivery, reply));
    }

    fn on_bounce(&self, delivery: &Delivery, failure: &Failure) -> BounceVerdict {
        self.record(event("bounced", delivery, &failure.text));
        BounceVerdict::Send
    }

    fn on_quarantined(&self, delivery: &Delivery, reason: &str) {
        self.record(event("quarantined", delivery, reason));
    }
}

export_plugin!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(json: &str) -> Webhook {
        Webhook::from_settings(&Settings::from_json(json)).unwrap()
    }

    fn at(time_ms: u64) -> Event {
        Event {
            event: "delivered",
            time_ms,
            queue_id: "q".into(),
            sender: "a@x.test".into(),
            recipients: vec!["b@y.test".into()],
            destination: "mx:y.test".into(),
            attempt: 1,
            detail: "250 ok".into(),
        }
    }

    #[test]
    fn a_batch_goes_when_full_or_when_its_oldest_event_is_old_enough() {
        let hook = webhook(r#"{"url": "https://hooks.test/x", "batch_size": 3, "max_delay": "10s"}"#);
        assert_eq!(hook.push(at(0), 0), (None, 0));
        assert_eq!(hook.push(at(1_000), 1_000), (None, 0));
        let batch = hook.push(at(2_000), 2_000).0.unwrap();
        assert_eq!(batch.len(), 3);
        hook.posted(3);
        assert_eq!(hook.push(at(20_000), 20_000), (None, 0));
        let late = hook.push(at(30_000), 30_000).0.map(|b| b.len());
        assert_eq!(late, Some(2), "the oldest waited 10 s");
    }

    #[test]
    fn a_failed_post_keeps_the_events_up_to_the_limit() {
        let hook = webhook(r#"{"url": "http://hooks.test/x", "batch_size": 2, "max_queued": 3}"#);
        assert_eq!(hook.push(at(0), 0), (None, 0));
        assert_eq!(hook.push(at(1), 1).0.map(|b| b.len()), Some(2));
        // Not posted: the next event brings them along.
        assert_eq!(hook.push(at(2), 2).0.map(|b| b.len()), Some(3));
        let (kept, dropped) = hook.push(at(3), 3);
        let kept = kept.unwrap();
        assert_eq!((kept.len(), dropped), (3, 1), "the oldest was dropped");
        assert_eq!(kept[0].time_ms, 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        for (json, expected) in [
            (r#"{"url": "ftp://x"}"#, "is not an http(s) URL"),
            (r#"{"url": "https://x", "batch_size": 0}"#, "batch_size must be"),
            (r#"{}"#, "missing field `url`"),
        ] {
            let error = Webhook::from_settings(&Settings::from_json(json))
                .err()
                .unwrap_or_default();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }
}
