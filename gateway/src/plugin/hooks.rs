//! Calling one hook of an instance, whichever package version it was
//! built against: the current one, or 0.1.0 (through `compat`).

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::Resource;

use super::bindings::mailgate::plugin::types::{Context, Outcome};
use super::bindings::{Plugin, v0_1};
use super::chain::StageCall;
use super::compat;
use super::convert;
use super::message::MessageHandle;
use super::state::State;

/// The exports of an instance.
pub enum Instance {
    /// Built against the current `mailgate:plugin` version.
    Current(Plugin),
    /// Built against `mailgate:plugin@0.1.0`.
    V0_1(v0_1::Plugin),
}

impl Instance {
    /// Calls `init` with the plugin's settings.
    pub async fn init(&self, store: &mut Store<State>, settings: &str) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::Current(plugin) => plugin.mailgate_plugin_hooks().call_init(store, settings).await,
            Self::V0_1(plugin) => plugin.mailgate_plugin_hooks().call_init(store, settings).await,
        }
    }

    /// Calls the hook of `call`'s stage; the outcome in the current types.
    pub async fn call(
        &self,
        store: &mut Store<State>,
        call: StageCall<'_>,
        ctx: &Context,
    ) -> wasmtime::Result<Outcome> {
        if let StageCall::Data(message) = call {
            // The message is lent to the hook for the call only.
            let handle = store.data_mut().table.push(MessageHandle(Arc::clone(message)))?;
            let lent = Resource::<MessageHandle>::new_borrow(handle.rep());
            let result = self.call_data(&mut *store, ctx, lent).await;
            let _ = store.data_mut().table.delete(handle);
            return result;
        }
        match self {
            Self::Current(plugin) => {
                let hooks = plugin.mailgate_plugin_hooks();
                match call {
                    StageCall::Connect => hooks.call_on_connect(store, ctx).await,
                    StageCall::Helo(name) => hooks.call_on_helo(store, ctx, name).await,
                    StageCall::Mail(path, parameters) => {
                        let parameters = convert::mail_parameters(parameters);
                        hooks.call_on_mail(store, ctx, &path.to_string(), &parameters).await
                    }
                    StageCall::Rcpt(rcpt, dsn) => {
                        let parameters = convert::rcpt_parameters(dsn);
                        hooks.call_on_rcpt(store, ctx, &rcpt.to_string(), &parameters).await
                    }
                    StageCall::Data(_) => Err(wasmtime::Error::msg("data is called above")),
                }
            }
            Self::V0_1(plugin) => {
                let hooks = plugin.mailgate_plugin_hooks();
                let ctx = ctx.clone().into();
                let outcome = match call {
                    StageCall::Connect => hooks.call_on_connect(store, &ctx).await,
                    StageCall::Helo(name) => hooks.call_on_helo(store, &ctx, name).await,
                    StageCall::Mail(path, parameters) => {
                        let parameters = convert::mail_parameters(parameters).into();
                        hooks.call_on_mail(store, &ctx, &path.to_string(), parameters).await
                    }
                    StageCall::Rcpt(rcpt, _) => hooks.call_on_rcpt(store, &ctx, &rcpt.to_string()).await,
                    StageCall::Data(_) => Err(wasmtime::Error::msg("data is called above")),
                };
                outcome.map(compat::outcome)
            }
        }
    }

    async fn call_data(
        &self,
        store: &mut Store<State>,
        ctx: &Context,
        message: Resource<MessageHandle>,
    ) -> wasmtime::Result<Outcome> {
        match self {
            Self::Current(plugin) => plugin.mailgate_plugin_hooks().call_on_data(store, ctx, message).await,
            Self::V0_1(plugin) => {
                let ctx = ctx.clone().into();
                let outcome = plugin.mailgate_plugin_hooks().call_on_data(store, &ctx, message).await;
                outcome.map(compat::outcome)
            }
        }
    }
}

/// What `instantiate` needs per version.
pub enum Pre {
    /// The current version.
    Current(super::bindings::PluginPre<State>),
    /// 0.1.0.
    V0_1(v0_1::PluginPre<State>),
}

impl Pre {
    /// The export that names a plugin built against 0.1.0.
    pub const HOOKS_0_1: &'static str = "mailgate:plugin/hooks@0.1.0";

    /// Instantiates into `store`; with the component instance itself for
    /// the current version (its `outbound` export is called dynamically,
    /// since not every plugin has it).
    pub async fn instantiate(
        &self,
        store: &mut Store<State>,
    ) -> Result<(Instance, Option<wasmtime::component::Instance>), wasmtime::Error> {
        Ok(match self {
            Self::Current(pre) => {
                let raw = pre.instance_pre().instantiate_async(&mut *store).await?;
                (Instance::Current(Plugin::new(&mut *store, &raw)?), Some(raw))
            }
            Self::V0_1(pre) => (Instance::V0_1(pre.instantiate_async(store).await?), None),
        })
    }
}
