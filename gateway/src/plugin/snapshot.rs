//! Fresh instances at the cost of warm ones: when a plugin is loaded in
//! `fresh` mode, its component is pre-initialized once (wasmtime's Wizer):
//! instantiated, `init` run with its settings, and the resulting memories
//! and globals written back into a new component as its initial state.
//! Every transaction then gets a new instance of that component: nothing an
//! earlier transaction did can be seen (a new instance, from the pool, with
//! copy-on-write memory), and `init` does not run again.
//!
//! A plugin whose initialized state cannot be captured that way (`init`
//! asked the host something whose answer may change, left host resources
//! open, or the component uses something Wizer does not snapshot, such as
//! changing its tables) keeps the plain path: instantiate and `init` per
//! transaction. The log says which and why.

use wasmtime::Store;
use wasmtime::component::{Component, Val};
use wasmtime_wizer::Wizer;

use super::engine::Runtime;
use super::state::State;

/// Why a component was not pre-initialized.
#[derive(Debug)]
pub enum NotSnapshotted {
    /// `init` refused the settings: the plugin cannot start at all.
    Refused(String),
    /// The state cannot be captured; run `init` per instance instead.
    Unsupported(String),
}

/// `text` as a WAVE string literal.
fn wave_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Pre-initializes `bytes` with `settings` in `store` (a store set up as
/// for a transaction, its time budget armed): the new component's bytes.
pub async fn preinitialize(
    runtime: &Runtime,
    store: &mut Store<State>,
    bytes: &[u8],
    settings: &str,
    legacy: bool,
) -> Result<Vec<u8>, NotSnapshotted> {
    // WAVE names a function in a versioned interface `package/iface.func@version`.
    let version = if legacy { "0.1.0" } else { "0.2.0" };
    let mut wizer = Wizer::new();
    wizer
        .init_func(format!(
            "mailgate:plugin/hooks.init@{version}({})",
            wave_string(settings)
        ))
        .keep_init_func(true);
    // What `init` asks the host (the clock, DNS, kv, HTTP, DKIM) must be
    // asked again per transaction: a plugin that asks keeps running it.
    let asked = super::transcript::Journal::default();
    store.data_mut().journal = Some(asked.clone());
    let linker = &runtime.linker;
    let (snapshot, results) = wizer
        .run_component(store, bytes, async |store, component: &Component| {
            linker.instantiate_async(store, component).await
        })
        .await
        .map_err(|e| NotSnapshotted::Unsupported(format!("{e:#}")))?;
    match results.first() {
        Some(Val::Result(Err(Some(message)))) => {
            let message = match &**message {
                Val::String(text) => text.clone(),
                other => format!("{other:?}"),
            };
            return Err(NotSnapshotted::Refused(message));
        }
        Some(Val::Result(Ok(_))) => {}
        other => return Err(NotSnapshotted::Unsupported(format!("init answered {other:?}"))),
    }
    let calls = asked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
    if calls > 0 {
        return Err(NotSnapshotted::Unsupported(format!(
            "init asked the host {calls} time(s) (clock, dns, kv, http or dkim), and must ask afresh for each transaction"
        )));
    }
    if !store.data().table.is_empty() {
        return Err(NotSnapshotted::Unsupported(
            "init left host resources open, which a snapshot cannot carry".into(),
        ));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugin::engine::RuntimeSettings;
    use crate::plugin::hooks::HookExports;
    use crate::plugin::host::HostServices;

    /// A component whose `init` sets a global to 7 and whose `bump` reports
    /// the global, the table's size and a byte of memory, then changes all
    /// three (`grow`: the table too).
    fn probe(grow: bool) -> Vec<u8> {
        let grow = if grow {
            "(drop (table.grow $t (ref.null func) (i32.const 1)))"
        } else {
            ""
        };
        let text = format!(
            r#"(component
              (core module $m
                (memory (export "memory") 1)
                (global $g (mut i32) (i32.const 0))
                (table $t 1 funcref)
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 256))
                (func (export "init") (param i32 i32) (result i32)
                  (global.set $g (i32.const 7))
                  (i32.store8 (i32.const 16) (i32.const 0))
                  (i32.const 16))
                (func (export "bump") (result i32)
                  (local $r i32)
                  (local.set $r (i32.add
                    (i32.add (i32.mul (global.get $g) (i32.const 1000)) (i32.mul (table.size $t) (i32.const 10)))
                    (i32.load8_u (i32.const 0))))
                  (global.set $g (i32.add (global.get $g) (i32.const 1)))
                  (i32.store8 (i32.const 0) (i32.add (i32.load8_u (i32.const 0)) (i32.const 1)))
                  {grow}
                  (local.get $r)))
              (core instance $i (instantiate $m))
              (func $init (param "settings" string) (result (result (error string)))
                (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
              (instance $hooks (export "init" (func $init)))
              (export "mailgate:plugin/hooks@0.2.0" (instance $hooks))
              (func (export "bump") (result s32) (canon lift (core func $i "bump"))))"#
        );
        wat::parse_str(text).expect("valid WAT")
    }

    fn store(runtime: &Runtime) -> Store<State> {
        let state = State::new(Arc::from("probe"), 1 << 20, HostServices::none());
        let mut store = Store::new(&runtime.engine, state);
        store.set_epoch_deadline(u64::MAX / 2);
        store
    }

    /// What `bump` says on each of three new instances of `component`,
    /// each `init`ialized first unless `snapshotted`.
    async fn three_instances(runtime: &Runtime, component: &Component, snapshotted: bool) -> Vec<i32> {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut store = store(runtime);
            let instance = runtime
                .linker
                .instantiate_async(&mut store, component)
                .await
                .expect("instance");
            if !snapshotted {
                let hooks = instance
                    .get_export_index(&mut store, None, HookExports::INTERFACE)
                    .expect("hooks");
                let init = instance
                    .get_export_index(&mut store, Some(&hooks), "init")
                    .expect("init");
                let init = instance
                    .get_typed_func::<(&str,), (Result<(), String>,)>(&mut store, init)
                    .expect("typed init");
                init.call_async(&mut store, ("{}",))
                    .await
                    .expect("init call")
                    .0
                    .expect("init ok");
            }
            let bump = instance.get_typed_func::<(), (i32,)>(&mut store, "bump").expect("bump");
            seen.push(bump.call_async(&mut store, ()).await.expect("bump call").0);
        }
        seen
    }

    #[tokio::test]
    async fn fresh_instances_of_a_snapshot_start_after_init_and_carry_nothing() {
        let cache = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime::new(&RuntimeSettings {
            cache_dir: cache.path().to_owned(),
            max_instances: 8,
            max_memory_bytes: 1 << 20,
        })
        .expect("runtime");
        // No table changes: snapshotted. Each instance sees the global
        // `init` set (7) and untouched memory, whatever the one before did.
        let snapshot = preinitialize(&runtime, &mut store(&runtime), &probe(false), "{}", false)
            .await
            .expect("snapshotted");
        let component = Component::from_binary(&runtime.engine, &snapshot).expect("compiled");
        assert_eq!(three_instances(&runtime, &component, true).await, [7010, 7010, 7010]);
        // A component that changes its table cannot be snapshotted: it
        // keeps `init` per instance, and carries nothing either.
        let growing = probe(true);
        assert!(matches!(
            preinitialize(&runtime, &mut store(&runtime), &growing, "{}", false).await,
            Err(NotSnapshotted::Unsupported(_))
        ));
        let component = Component::from_binary(&runtime.engine, &growing).expect("compiled");
        assert_eq!(three_instances(&runtime, &component, false).await, [7010, 7010, 7010]);
    }

    #[test]
    fn settings_become_wave_strings() {
        assert_eq!(wave_string(r#"{"a":"b\c"}"#), r#""{\"a\":\"b\\c\"}""#);
        assert_eq!(wave_string("x\ny\u{1}"), r#""x\ny\u{1}""#);
    }
}
