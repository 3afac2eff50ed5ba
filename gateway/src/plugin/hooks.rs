//! Calling one hook of an instance, whichever package version it was
//! built against: the current one, or 0.1.0 (through `compat`).
//!
//! A warm instance serves many transactions, so its exports are
//! type-checked once, when it is made (the bindings' `Plugin`). A fresh
//! instance lives for one transaction and, with the hooks a plugin leaves
//! to the SDK's default skipped, usually sees one or two of its six hooks:
//! its exports are found once per component ([`HookExports`]) and each
//! hook is type-checked when it is called ([`Lazy`]), not all six per
//! instance.

use std::sync::Arc;

use wasmtime::component::{ComponentExportIndex, ComponentNamedList, InstancePre, Lift, Lower, Resource};
use wasmtime::{AsContextMut, Store};

use super::bindings::mailgate::plugin::types::{Context, MailParameters, Outcome, RcptParameters};
use super::bindings::{Plugin, v0_1};
use super::chain::StageCall;
use super::compat;
use super::convert;
use super::message::MessageHandle;
use super::state::State;

/// The exports of an instance.
pub enum Instance {
    /// Built against the current `mailgate:plugin` version, its exports
    /// type-checked (a warm instance).
    Current(Plugin),
    /// Built against the current version, each hook type-checked when
    /// called (a fresh instance).
    Lazy(Lazy),
    /// Built against `mailgate:plugin@0.1.0`.
    V0_1(v0_1::Plugin),
}

impl Instance {
    /// Calls `init` with the plugin's settings.
    pub async fn init(&self, store: &mut Store<State>, settings: &str) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::Current(plugin) => plugin.mailgate_plugin_hooks().call_init(store, settings).await,
            Self::Lazy(lazy) => {
                lazy.call::<(&str,), Result<(), String>>(store, lazy.exports.init, (settings,))
                    .await
            }
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
            Self::Lazy(lazy) => {
                let at = &lazy.exports;
                match call {
                    StageCall::Connect => lazy.call::<(&Context,), _>(store, at.on_connect, (ctx,)).await,
                    StageCall::Helo(name) => lazy.call::<(&Context, &str), _>(store, at.on_helo, (ctx, name)).await,
                    StageCall::Mail(path, parameters) => {
                        let parameters = convert::mail_parameters(parameters);
                        let path = path.to_string();
                        lazy.call::<(&Context, &str, &MailParameters), _>(store, at.on_mail, (ctx, &path, &parameters))
                            .await
                    }
                    StageCall::Rcpt(rcpt, dsn) => {
                        let parameters = convert::rcpt_parameters(dsn);
                        let rcpt = rcpt.to_string();
                        lazy.call::<(&Context, &str, &RcptParameters), _>(store, at.on_rcpt, (ctx, &rcpt, &parameters))
                            .await
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
            Self::Lazy(lazy) => {
                let at = lazy.exports.on_data;
                lazy.call::<(&Context, Resource<MessageHandle>), _>(store, at, (ctx, message))
                    .await
            }
            Self::V0_1(plugin) => {
                let ctx = ctx.clone().into();
                let outcome = plugin.mailgate_plugin_hooks().call_on_data(store, &ctx, message).await;
                outcome.map(compat::outcome)
            }
        }
    }
}

/// A fresh instance's hooks: the component instance and where its hooks
/// are.
pub struct Lazy {
    raw: wasmtime::component::Instance,
    exports: Arc<HookExports>,
}

impl Lazy {
    /// Type-checks the hook at `index` against `P` and `R`, then calls it.
    async fn call<P, R>(
        &self,
        mut store: impl AsContextMut<Data = State>,
        index: ComponentExportIndex,
        params: P,
    ) -> wasmtime::Result<R>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: Lift + Send + Sync + 'static,
    {
        let hook = self.raw.get_typed_func::<P, (R,)>(&mut store, index)?;
        let (result,) = hook.call_async(&mut store, params).await?;
        Ok(result)
    }
}

/// Where a component's hooks are among its exports, found at load.
pub struct HookExports {
    init: ComponentExportIndex,
    on_connect: ComponentExportIndex,
    on_helo: ComponentExportIndex,
    on_mail: ComponentExportIndex,
    on_rcpt: ComponentExportIndex,
    on_data: ComponentExportIndex,
}

impl HookExports {
    /// The export that names the current version's hooks.
    pub const INTERFACE: &'static str = "mailgate:plugin/hooks@0.2.0";

    fn find(pre: &InstancePre<State>) -> wasmtime::Result<Self> {
        let component = pre.component();
        let missing = |name: &str| wasmtime::Error::msg(format!("no export {name}"));
        let hooks = component
            .get_export_index(None, Self::INTERFACE)
            .ok_or_else(|| missing(Self::INTERFACE))?;
        let find = |name: &str| {
            component
                .get_export_index(Some(&hooks), name)
                .ok_or_else(|| missing(name))
        };
        Ok(Self {
            init: find("init")?,
            on_connect: find("on-connect")?,
            on_helo: find("on-helo")?,
            on_mail: find("on-mail")?,
            on_rcpt: find("on-rcpt")?,
            on_data: find("on-data")?,
        })
    }
}

/// What `instantiate` needs per version.
pub enum Pre {
    /// The current version, with where its hooks are (for fresh
    /// instances).
    Current(InstancePre<State>, Arc<HookExports>),
    /// 0.1.0.
    V0_1(v0_1::PluginPre<State>),
}

impl Pre {
    /// The export that names a plugin built against 0.1.0.
    pub const HOOKS_0_1: &'static str = "mailgate:plugin/hooks@0.1.0";

    /// For a component built against the current version: finds its
    /// hooks (their types are checked by the first, warm, instance).
    pub fn current(pre: InstancePre<State>) -> wasmtime::Result<Self> {
        let exports = Arc::new(HookExports::find(&pre)?);
        Ok(Self::Current(pre, exports))
    }

    /// Instantiates into `store`; with the component instance itself for
    /// the current version (its `outbound` export is called dynamically,
    /// since not every plugin has it). A `warm` instance has its hooks
    /// type-checked now, a fresh one when each is called.
    pub async fn instantiate(
        &self,
        store: &mut Store<State>,
        warm: bool,
    ) -> Result<(Instance, Option<wasmtime::component::Instance>), wasmtime::Error> {
        Ok(match self {
            Self::Current(pre, exports) => {
                let raw = pre.instantiate_async(&mut *store).await?;
                let instance = if warm {
                    Instance::Current(Plugin::new(&mut *store, &raw)?)
                } else {
                    Instance::Lazy(Lazy {
                        raw,
                        exports: Arc::clone(exports),
                    })
                };
                (instance, Some(raw))
            }
            Self::V0_1(pre) => (Instance::V0_1(pre.instantiate_async(store).await?), None),
        })
    }
}
