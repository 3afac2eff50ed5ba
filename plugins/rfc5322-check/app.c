// rfc5322-check: a mailgate plugin written in C.
//
// Refuses a message whose header section does not have exactly one From
// and exactly one Date field (RFC 5322 section 3.6: both are required and
// may occur once), and one with more than one Subject, Message-ID, To, Cc,
// Sender or Reply-To. Runs at the `data` stage and reads the gateway's
// header list, so it parses nothing itself. Takes no settings.
//
// Build (see README.md): wit-bindgen c, Debian's clang and wasi-libc for a
// wasm32-wasi reactor, then `wasm-tools component new`. It uses no libc
// I/O, so the core module imports nothing from WASI and needs no adapter.

#include <stdlib.h>
#include <string.h>

#include "rfc5322_check.h"

typedef mailgate_plugin_types_outcome_t outcome_t;

static void decide_continue(outcome_t *ret) {
    ret->verdict.tag = MAILGATE_PLUGIN_TYPES_VERDICT_CONTINUE;
    ret->modifications.ptr = NULL;
    ret->modifications.len = 0;
}

// A 550 5.6.0 reply; the text is copied (the gateway frees what a hook
// returns).
static void decide_reject(outcome_t *ret, const char *text) {
    ret->verdict.tag = MAILGATE_PLUGIN_TYPES_VERDICT_REJECT;
    mailgate_plugin_types_reply_t *reply = &ret->verdict.val.reject;
    reply->code = 550;
    reply->enhanced.is_some = true;
    rfc5322_check_string_dup(&reply->enhanced.val, "5.6.0");
    rfc5322_check_string_dup(&reply->text, text);
    ret->modifications.ptr = NULL;
    ret->modifications.len = 0;
}

// "message has N NAME header fields; RFC 5322 " + rule, into `out`
// (libc's stdio would make the component import WASI's file system).
static void describe(char *out, size_t size, size_t n, const char *name, const char *rule) {
    char digits[24];
    size_t d = sizeof digits;
    digits[--d] = '\0';
    do {
        digits[--d] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0 && d > 0);
    const char *parts[] = {"message has ", digits + d, " ", name, " header fields; RFC 5322 ", rule};
    size_t at = 0;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        for (const char *c = parts[i]; *c != '\0' && at + 1 < size; c++) {
            out[at++] = *c;
        }
    }
    out[at] = '\0';
}

static void log_info(const char *text) {
    rfc5322_check_string_t message;
    rfc5322_check_string_dup(&message, text);
    mailgate_plugin_log_write(MAILGATE_PLUGIN_LOG_LEVEL_INFO, &message);
    rfc5322_check_string_free(&message);
}

// How many fields called `name` the message has.
static size_t count(exports_mailgate_plugin_hooks_borrow_message_t message, const char *name) {
    rfc5322_check_string_t field;
    rfc5322_check_string_dup(&field, name);
    rfc5322_check_list_string_t values;
    mailgate_plugin_types_method_message_header(message, &field, &values);
    size_t n = values.len;
    rfc5322_check_list_string_free(&values);
    rfc5322_check_string_free(&field);
    return n;
}

bool exports_mailgate_plugin_hooks_init(rfc5322_check_string_t *settings, rfc5322_check_string_t *err) {
    // Settings arrive as a JSON object; this plugin has none to read.
    size_t i = 0, len = settings->len;
    const char *text = (const char *)settings->ptr;
    int empty = 1;
    for (i = 0; i < len; i++) {
        char c = text[i];
        if (c != '{' && c != '}' && c != ' ' && c != '\n' && c != '\t' && c != '\r') {
            empty = 0;
        }
    }
    rfc5322_check_string_free(settings);
    if (!empty) {
        rfc5322_check_string_dup(err, "rfc5322-check takes no settings");
        return false;
    }
    return true;
}

void exports_mailgate_plugin_hooks_on_connect(exports_mailgate_plugin_hooks_context_t *ctx, outcome_t *ret) {
    exports_mailgate_plugin_hooks_context_free(ctx);
    decide_continue(ret);
}

void exports_mailgate_plugin_hooks_on_helo(exports_mailgate_plugin_hooks_context_t *ctx, rfc5322_check_string_t *name,
                                           outcome_t *ret) {
    rfc5322_check_string_free(name);
    exports_mailgate_plugin_hooks_context_free(ctx);
    decide_continue(ret);
}

void exports_mailgate_plugin_hooks_on_mail(exports_mailgate_plugin_hooks_context_t *ctx,
                                           rfc5322_check_string_t *reverse_path,
                                           exports_mailgate_plugin_hooks_mail_parameters_t *parameters,
                                           outcome_t *ret) {
    exports_mailgate_plugin_hooks_mail_parameters_free(parameters);
    rfc5322_check_string_free(reverse_path);
    exports_mailgate_plugin_hooks_context_free(ctx);
    decide_continue(ret);
}

void exports_mailgate_plugin_hooks_on_rcpt(exports_mailgate_plugin_hooks_context_t *ctx,
                                           rfc5322_check_string_t *recipient,
                                           exports_mailgate_plugin_hooks_rcpt_parameters_t *parameters,
                                           outcome_t *ret) {
    exports_mailgate_plugin_hooks_rcpt_parameters_free(parameters);
    rfc5322_check_string_free(recipient);
    exports_mailgate_plugin_hooks_context_free(ctx);
    decide_continue(ret);
}

// The checks; `on_data` gives the message handle back after them.
static void check(exports_mailgate_plugin_hooks_borrow_message_t message, outcome_t *ret) {
    static const char *exactly_once[] = {"From", "Date"};
    static const char *at_most_once[] = {"Sender", "Reply-To", "To", "Cc", "Message-ID", "Subject"};
    char reason[160];
    for (size_t i = 0; i < sizeof exactly_once / sizeof *exactly_once; i++) {
        size_t n = count(message, exactly_once[i]);
        if (n != 1) {
            describe(reason, sizeof reason, n, exactly_once[i], "requires exactly one");
            log_info(reason);
            decide_reject(ret, reason);
            return;
        }
    }
    for (size_t i = 0; i < sizeof at_most_once / sizeof *at_most_once; i++) {
        size_t n = count(message, at_most_once[i]);
        if (n > 1) {
            describe(reason, sizeof reason, n, at_most_once[i], "allows one");
            log_info(reason);
            decide_reject(ret, reason);
            return;
        }
    }
    decide_continue(ret);
}

void exports_mailgate_plugin_hooks_on_data(exports_mailgate_plugin_hooks_context_t *ctx,
                                           exports_mailgate_plugin_hooks_borrow_message_t message, outcome_t *ret) {
    exports_mailgate_plugin_hooks_context_free(ctx);
    check(message, ret);
    // A borrowed handle must be dropped before the hook returns.
    mailgate_plugin_types_message_drop_borrow(message);
}
