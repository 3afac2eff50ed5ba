"""external-tagger: a mailgate plugin written in Python.

Marks mail whose sender is outside the organisation: prefixes the Subject
(e.g. "[EXTERNAL] ...") and adds an `X-External-Sender` header, so that
readers treat it with care. Runs at the `data` stage.

Build (offline once componentize-py is installed from PyPI):

    pip install componentize-py==0.25.1
    componentize-py -d wit -w tagger componentize -p . app -o external_tagger.wasm

Settings (`[plugin.settings]`):

    internal_domains = ["example.com", "*.example.com"]   # required
    subject_prefix = "[EXTERNAL]"                        # default
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types

# Set by `init`; one plugin instance serves one transaction (or several,
# with `instances = "reused"`), so module state is per instance.
CONFIG = {"internal_domains": [], "subject_prefix": "[EXTERNAL]"}


def outcome(verdict=None, modifications=None):
    return types.Outcome(verdict or types.Verdict_Continue(), modifications or [])


def matches(pattern, domain):
    pattern, domain = pattern.lower(), domain.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return pattern == domain


def is_internal(address):
    if "@" not in address:
        return False
    domain = address.rsplit("@", 1)[1]
    return any(matches(p, domain) for p in CONFIG["internal_domains"])


class Hooks(exports.Hooks):
    def init(self, settings: str) -> None:
        try:
            given = json.loads(settings)
        except ValueError as e:
            raise Err(f"settings are not JSON: {e}")
        unknown = set(given) - {"internal_domains", "subject_prefix"}
        if unknown:
            raise Err(f"unknown settings: {', '.join(sorted(unknown))}")
        domains = given.get("internal_domains")
        if not isinstance(domains, list) or not domains or not all(isinstance(d, str) for d in domains):
            raise Err("internal_domains must be a non-empty list of domain patterns")
        CONFIG["internal_domains"] = domains
        CONFIG["subject_prefix"] = str(given.get("subject_prefix", "[EXTERNAL]"))

    def on_connect(self, ctx):
        return outcome()

    def on_helo(self, ctx, name):
        return outcome()

    def on_mail(self, ctx, reverse_path, parameters):
        return outcome()

    def on_rcpt(self, ctx, recipient, parameters):
        return outcome()

    def on_data(self, ctx, message):
        sender = ctx.reverse_path or ""
        if sender == "" or is_internal(sender):
            return outcome()
        prefix = CONFIG["subject_prefix"]
        subjects = message.header("Subject")
        subject = subjects[0] if subjects else ""
        changes = [
            types.Modification_AddHeader(types.Header("X-External-Sender", sender)),
        ]
        if not subject.startswith(prefix):
            new_subject = f"{prefix} {subject}".rstrip()
            changes.append(types.Modification_SetHeader(types.Header("Subject", new_subject)))
        log.write(log.Level.DEBUG, f"tagged a message from {sender}")
        return outcome(modifications=changes)
