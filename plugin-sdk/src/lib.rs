//! # mailgate plugin SDK
//!
//! Write a mailgate filter plugin in Rust: implement [`Plugin`] (every
//! hook defaults to [`Verdict::Continue`]), export it with
//! [`export_plugin!`], and build for `wasm32-wasip2`:
//!
//! ```no_run
//! use mailgate_plugin_sdk::{Mailbox, Plugin, Settings, Transaction, Verdict, export_plugin};
//!
//! struct BlockTestDomain;
//!
//! impl Plugin for BlockTestDomain {
//!     fn init(_settings: &Settings) -> Result<Self, String> {
//!         Ok(Self)
//!     }
//!
//!     fn on_rcpt_to(&self, rcpt: &Mailbox, _txn: &Transaction) -> Verdict {
//!         if rcpt.domain() == "blocked.test" {
//!             return Verdict::reject(550, "5.7.1", "recipient domain refused");
//!         }
//!         Verdict::Continue
//!     }
//! }
//!
//! export_plugin!(BlockTestDomain);
//! ```
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! The gateway calls [`Plugin::init`] on every new instance with the
//! plugin's settings table, then the hooks of the stages the plugin is
//! configured for. Modifications (header edits, rewrites, routes, metadata)
//! are asked for through the [`Transaction`]; which are legal depends on the
//! stage (see each method). Capabilities ([`log`], [`clock`], [`dns`],
//! [`kv`], [`metrics`], [`dkim`]) must be granted in the gateway's configuration: a
//! plugin that uses one it was not granted fails to load. [`dns::Resolver`]
//! and [`kv::Store`] are traits with in-memory stand-ins
//! ([`dns::StaticZone`], [`kv::Memory`]), so a plugin's logic can be unit
//! tested on the host.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "outbound-plugin",
        pub_export_macro: true,
        default_bindings_module: "mailgate_plugin_sdk::bindings",
    });
}

pub mod clock;
pub mod dkim;
pub mod dns;
pub mod http;
pub mod kv;
pub mod log;
mod message;
pub mod metrics;
pub mod outbound;
mod settings;
mod transaction;
mod types;

pub use message::{Message, Part};
pub use settings::{Settings, duration, parse_duration};
pub use transaction::Transaction;
pub use types::{
    BodyType, Client, Header, MailParameters, Mailbox, NextHop, Notify, RcptParameters, Reply, Ret, ReversePath,
    Verdict,
};

/// A filter plugin. Every hook defaults to [`Verdict::Continue`]; implement
/// the ones for the stages the plugin is configured to run at. An inbound
/// hook left to its default tells the gateway so on its first call, and the
/// gateway stops calling it: configuring a plugin for more stages than it
/// implements costs nothing.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its settings (the `[plugin.settings]` table).
    /// An error here at start-up stops the gateway with the message.
    fn init(settings: &Settings) -> Result<Self, String>;

    /// A client connected, before the greeting.
    ///
    /// ```no_run
    /// # use mailgate_plugin_sdk::*;
    /// # struct P;
    /// # impl Plugin for P {
    /// # fn init(_: &Settings) -> Result<Self, String> { Ok(P) }
    /// fn on_connect(&self, txn: &Transaction) -> Verdict {
    ///     if txn.client().ip.starts_with("192.0.2.") {
    ///         return Verdict::disconnect(554, "5.7.1", "no service for you");
    ///     }
    ///     Verdict::Continue
    /// }
    /// # }
    /// ```
    fn on_connect(&self, txn: &Transaction) -> Verdict {
        let _ = txn;
        default_hook();
        Verdict::Continue
    }

    /// EHLO or HELO with `name`.
    ///
    /// ```no_run
    /// # use mailgate_plugin_sdk::*;
    /// # struct P;
    /// # impl Plugin for P {
    /// # fn init(_: &Settings) -> Result<Self, String> { Ok(P) }
    /// fn on_helo(&self, name: &str, txn: &Transaction) -> Verdict {
    ///     txn.set_metadata("helo-looks-dynamic", if name.contains("dyn") { "yes" } else { "no" });
    ///     Verdict::Continue
    /// }
    /// # }
    /// ```
    fn on_helo(&self, name: &str, txn: &Transaction) -> Verdict {
        let _ = (name, txn);
        default_hook();
        Verdict::Continue
    }

    /// MAIL FROM with `from` (the null path for bounces).
    ///
    /// ```no_run
    /// # use mailgate_plugin_sdk::*;
    /// # struct P;
    /// # impl Plugin for P {
    /// # fn init(_: &Settings) -> Result<Self, String> { Ok(P) }
    /// fn on_mail_from(&self, from: &ReversePath, params: &MailParameters, txn: &Transaction) -> Verdict {
    ///     if params.size.is_some_and(|size| size > 10_000_000) {
    ///         return Verdict::reject(552, "5.3.4", "too big for this route");
    ///     }
    ///     if let ReversePath::Mailbox(sender) = from {
    ///         if sender.domain() == "old.example" {
    ///             txn.set_reverse_path(&format!("{}@new.example", sender.local_part()));
    ///         }
    ///     }
    ///     Verdict::Continue
    /// }
    /// # }
    /// ```
    fn on_mail_from(&self, from: &ReversePath, params: &MailParameters, txn: &Transaction) -> Verdict {
        let _ = (from, params, txn);
        default_hook();
        Verdict::Continue
    }

    /// RCPT TO with `rcpt`; its DSN parameters are in
    /// [`Transaction::rcpt_parameters`].
    ///
    /// ```no_run
    /// # use mailgate_plugin_sdk::*;
    /// # struct P;
    /// # impl Plugin for P {
    /// # fn init(_: &Settings) -> Result<Self, String> { Ok(P) }
    /// fn on_rcpt_to(&self, rcpt: &Mailbox, txn: &Transaction) -> Verdict {
    ///     if rcpt.domain() == "partner.example" {
    ///         txn.route(NextHop::Smarthost("relay.partner.example:587".into()));
    ///     }
    ///     Verdict::Continue
    /// }
    /// # }
    /// ```
    fn on_rcpt_to(&self, rcpt: &Mailbox, txn: &Transaction) -> Verdict {
        let _ = (rcpt, txn);
        default_hook();
        Verdict::Continue
    }

    /// The message was received (after the final dot, before the reply).
    ///
    /// ```no_run
    /// # use mailgate_plugin_sdk::*;
    /// # struct P;
    /// # impl Plugin for P {
    /// # fn init(_: &Settings) -> Result<Self, String> { Ok(P) }
    /// fn on_data(&self, message: &Message, txn: &Transaction) -> Verdict {
    ///     let subject = message.first_header("Subject").unwrap_or_default();
    ///     if subject.contains("viagra") {
    ///         return Verdict::Quarantine("subject looks like spam".into());
    ///     }
    ///     txn.add_header("X-Checked-By", "example-plugin");
    ///     Verdict::Continue
    /// }
    /// # }
    /// ```
    fn on_data(&self, message: &Message, txn: &Transaction) -> Verdict {
        let _ = (message, txn);
        default_hook();
        Verdict::Continue
    }

    /// Outbound (stage `deliver`): before an attempt to deliver to
    /// `delivery`'s destination.
    fn on_deliver(&self, delivery: &outbound::Delivery) -> outbound::DeliverVerdict {
        let _ = delivery;
        outbound::DeliverVerdict::Continue
    }

    /// Outbound (stage `defer`): the attempt failed for now.
    fn on_defer(&self, delivery: &outbound::Delivery, failure: &outbound::Failure) -> outbound::DeferVerdict {
        let _ = (delivery, failure);
        outbound::DeferVerdict::Default
    }

    /// Outbound (stage `bounce`): a bounce is about to be written for the
    /// recipients.
    fn on_bounce(&self, delivery: &outbound::Delivery, failure: &outbound::Failure) -> outbound::BounceVerdict {
        let _ = (delivery, failure);
        outbound::BounceVerdict::Send
    }

    /// Outbound (stage `delivered`): the next hop accepted the recipients
    /// with `reply`.
    fn on_delivered(&self, delivery: &outbound::Delivery, reply: &str) {
        let _ = (delivery, reply);
    }

    /// Outbound (stage `quarantined`): a plugin put the message in the
    /// quarantine with `reason` instead of queueing it.
    fn on_quarantined(&self, delivery: &outbound::Delivery, reason: &str) {
        let _ = (delivery, reason);
    }
}

/// Tells the gateway that the calling hook is a default, which does
/// nothing (`mailgate:plugin/defaults`): it stops calling that hook of the
/// plugin, so a stage the plugin is configured for but does not implement
/// costs nothing after its first call. Off WebAssembly (unit tests) it does
/// nothing.
fn default_hook() {
    #[cfg(target_arch = "wasm32")]
    bindings::mailgate::plugin::defaults::default_hook();
}

/// Exports a [`Plugin`] implementation as the component's hooks.
///
/// Use it once, at the top level of the plugin crate. The exports exist
/// only when building for WebAssembly, so the plugin's logic can be unit
/// tested on the host with `cargo test`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        pub struct __MailgatePluginExport;

        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::mailgate::plugin::hooks::Guest for __MailgatePluginExport {
            fn init(settings: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::init::<$plugin>(settings)
            }
            fn on_connect(ctx: $crate::__private::Context) -> $crate::__private::Outcome {
                $crate::__private::on_connect::<$plugin>(ctx)
            }
            fn on_helo(ctx: $crate::__private::Context, name: ::std::string::String) -> $crate::__private::Outcome {
                $crate::__private::on_helo::<$plugin>(ctx, name)
            }
            fn on_mail(
                ctx: $crate::__private::Context,
                reverse_path: ::std::string::String,
                parameters: $crate::__private::MailParameters,
            ) -> $crate::__private::Outcome {
                $crate::__private::on_mail::<$plugin>(ctx, reverse_path, parameters)
            }
            fn on_rcpt(
                ctx: $crate::__private::Context,
                recipient: ::std::string::String,
                parameters: $crate::__private::RcptParameters,
            ) -> $crate::__private::Outcome {
                $crate::__private::on_rcpt::<$plugin>(ctx, recipient, parameters)
            }
            fn on_data(ctx: $crate::__private::Context, message: &$crate::__private::Message) -> $crate::__private::Outcome {
                $crate::__private::on_data::<$plugin>(ctx, message)
            }
        }

        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::mailgate::plugin::outbound::Guest for __MailgatePluginExport {
            fn on_deliver(
                delivery: $crate::__private::OutboundDelivery,
            ) -> $crate::__private::DeliverVerdict {
                $crate::__private::on_deliver::<$plugin>(delivery)
            }
            fn on_defer(
                delivery: $crate::__private::OutboundDelivery,
                failure: $crate::__private::OutboundFailure,
            ) -> $crate::__private::DeferVerdict {
                $crate::__private::on_defer::<$plugin>(delivery, failure)
            }
            fn on_bounce(
                delivery: $crate::__private::OutboundDelivery,
                failure: $crate::__private::OutboundFailure,
            ) -> $crate::__private::BounceVerdict {
                $crate::__private::on_bounce::<$plugin>(delivery, failure)
            }
            fn on_delivered(delivery: $crate::__private::OutboundDelivery, reply: ::std::string::String) {
                $crate::__private::on_delivered::<$plugin>(delivery, reply)
            }
            fn on_quarantined(delivery: $crate::__private::OutboundDelivery, reason: ::std::string::String) {
                $crate::__private::on_quarantined::<$plugin>(delivery, reason)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export!(__MailgatePluginExport with_types_in $crate::bindings);

        // Off WebAssembly nothing is exported; referencing the hooks keeps
        // host builds (the plugin's unit tests) free of unused warnings.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$plugin as $crate::Plugin>::init;
            let _ = <$plugin as $crate::Plugin>::on_connect;
            let _ = <$plugin as $crate::Plugin>::on_helo;
            let _ = <$plugin as $crate::Plugin>::on_mail_from;
            let _ = <$plugin as $crate::Plugin>::on_rcpt_to;
            let _ = <$plugin as $crate::Plugin>::on_data;
            let _ = <$plugin as $crate::Plugin>::on_deliver;
            let _ = <$plugin as $crate::Plugin>::on_defer;
            let _ = <$plugin as $crate::Plugin>::on_bounce;
            let _ = <$plugin as $crate::Plugin>::on_delivered;
            let _ = <$plugin as $crate::Plugin>::on_quarantined;
        };
    };
}

/// Glue for [`export_plugin!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    pub use crate::bindings::exports::mailgate::plugin::outbound::{
        BounceVerdict, DeferVerdict, DeliverVerdict, Delivery as OutboundDelivery, Failure as OutboundFailure,
    };
    pub use crate::bindings::mailgate::plugin::types::{Context, MailParameters, Message, Outcome, RcptParameters};
    use crate::{Plugin, Settings, Transaction, Verdict};

    thread_local! {
        // One plugin value per instance, set by `init`. Wasm components are
        // single-threaded, so a thread-local is the instance's state.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<P: Plugin>(settings: String) -> Result<(), String> {
        let plugin = P::init(&Settings::from_json(settings))?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    fn run<P: Plugin>(ctx: Context, hook: impl FnOnce(&P, &Transaction) -> Verdict) -> Outcome {
        run_with::<P>(Transaction::new(ctx), hook)
    }

    fn run_with<P: Plugin>(txn: Transaction, hook: impl FnOnce(&P, &Transaction) -> Verdict) -> Outcome {
        let verdict = INSTANCE.with(|cell| {
            let guard = cell.borrow();
            match guard.as_ref().and_then(|any| any.downcast_ref::<P>()) {
                Some(plugin) => hook(plugin, &txn),
                None => Verdict::tempfail(451, "4.3.0", "plugin called before init"),
            }
        });
        txn.into_outcome(verdict)
    }

    pub fn on_connect<P: Plugin>(ctx: Context) -> Outcome {
        run::<P>(ctx, |p, txn| p.on_connect(txn))
    }

    pub fn on_helo<P: Plugin>(ctx: Context, name: String) -> Outcome {
        run::<P>(ctx, |p, txn| p.on_helo(&name, txn))
    }

    pub fn on_mail<P: Plugin>(ctx: Context, reverse_path: String, parameters: MailParameters) -> Outcome {
        let from = crate::ReversePath::parse(&reverse_path);
        let params = crate::MailParameters::from(parameters);
        run::<P>(ctx, |p, txn| p.on_mail_from(&from, &params, txn))
    }

    pub fn on_rcpt<P: Plugin>(ctx: Context, recipient: String, parameters: RcptParameters) -> Outcome {
        let rcpt = crate::Mailbox::new(recipient);
        let txn = Transaction::new(ctx).with_rcpt(parameters.into());
        run_with::<P>(txn, |p, txn| p.on_rcpt_to(&rcpt, txn))
    }

    pub fn on_data<P: Plugin>(ctx: Context, message: &Message) -> Outcome {
        let message = crate::Message::new(message);
        run::<P>(ctx, |p, txn| p.on_data(&message, txn))
    }

    /// The plugin value, or `None` before `init`.
    fn with<P: Plugin, T>(f: impl FnOnce(&P) -> T) -> Option<T> {
        INSTANCE.with(|cell| cell.borrow().as_ref().and_then(|any| any.downcast_ref::<P>()).map(f))
    }

    pub fn on_deliver<P: Plugin>(delivery: OutboundDelivery) -> DeliverVerdict {
        let delivery = delivery.into();
        with::<P, _>(|p| p.on_deliver(&delivery))
            .unwrap_or(crate::outbound::DeliverVerdict::Continue)
            .into()
    }

    pub fn on_defer<P: Plugin>(delivery: OutboundDelivery, failure: OutboundFailure) -> DeferVerdict {
        let (delivery, failure) = (delivery.into(), failure.into());
        with::<P, _>(|p| p.on_defer(&delivery, &failure))
            .unwrap_or(crate::outbound::DeferVerdict::Default)
            .into()
    }

    pub fn on_bounce<P: Plugin>(delivery: OutboundDelivery, failure: OutboundFailure) -> BounceVerdict {
        let (delivery, failure) = (delivery.into(), failure.into());
        with::<P, _>(|p| p.on_bounce(&delivery, &failure))
            .unwrap_or(crate::outbound::BounceVerdict::Send)
            .into()
    }

    pub fn on_delivered<P: Plugin>(delivery: OutboundDelivery, reply: String) {
        let delivery = delivery.into();
        with::<P, _>(|p| p.on_delivered(&delivery, &reply));
    }

    pub fn on_quarantined<P: Plugin>(delivery: OutboundDelivery, reason: String) {
        let delivery = delivery.into();
        with::<P, _>(|p| p.on_quarantined(&delivery, &reason));
    }
}
