//! Test-only plugin that misbehaves on purpose, as its settings say:
//! `{"mode": "...", "stage": "rcpt"}` with mode `trap`, `panic`, `spin`,
//! `grab-memory`, `illegal-verdict`, `illegal-modification`, or
//! `refuse-settings` (init fails).

use mailgate_plugin_sdk::{
    MailParameters, Mailbox, Message, Plugin, ReversePath, Settings, Transaction, Verdict, export_plugin,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Faulty {
    mode: String,
    #[serde(default = "rcpt")]
    stage: String,
}

#[inline(never)]
fn panic_at(stage: &str) -> Verdict {
    #[allow(clippy::panic, reason = "the panic is what this mode tests")]
    {
        panic!("faulty plugin panicked on purpose at {stage}")
    }
}

fn rcpt() -> String {
    "rcpt".into()
}

impl Faulty {
    fn misbehave(&self, stage: &str, txn: &Transaction) -> Verdict {
        if stage != self.stage {
            return Verdict::Continue;
        }
        match self.mode.as_str() {
            "trap" => std::process::abort(),
            // A panic: its message goes to stderr before the trap.
            "panic" => panic_at(stage),
            "spin" => loop {
                std::hint::black_box(0u64);
            },
            "grab-memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "illegal-verdict" => Verdict::reject(250, "2.0.0", "a rejection that says OK"),
            "illegal-modification" => {
                // Headers can only change at the data stage.
                txn.add_header("X-Too-Early", "yes");
                Verdict::Continue
            }
            _ => Verdict::Continue,
        }
    }
}

impl Plugin for Faulty {
    fn init(settings: &Settings) -> Result<Self, String> {
        let faulty: Faulty = settings.parse()?;
        if faulty.mode == "refuse-settings" {
            return Err("these settings are refused on purpose".into());
        }
        Ok(faulty)
    }

    fn on_connect(&self, txn: &Transaction) -> Verdict {
        self.misbehave("connect", txn)
    }

    fn on_helo(&self, _name: &str, txn: &Transaction) -> Verdict {
        self.misbehave("helo", txn)
    }

    fn on_mail_from(&self, _from: &ReversePath, _params: &MailParameters, txn: &Transaction) -> Verdict {
        self.misbehave("mail", txn)
    }

    fn on_rcpt_to(&self, _rcpt: &Mailbox, txn: &Transaction) -> Verdict {
        self.misbehave("rcpt", txn)
    }

    fn on_data(&self, _message: &Message, txn: &Transaction) -> Verdict {
        self.misbehave("data", txn)
    }
}

export_plugin!(Faulty);
