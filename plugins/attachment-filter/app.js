// attachment-filter: a mailgate plugin written in JavaScript.
//
// Refuses (or quarantines) mail that carries an attachment whose file name
// ends in a blocked extension (executables, scripts, disk images...), the
// policy Postfix operators write as mime_header_checks. Runs at the `data`
// stage and reads the gateway's MIME part list, so it never parses MIME
// itself.
//
// Build (offline once componentize-js is installed from npm):
//
//     npm install --no-save
//     npx componentize-js app.js --wit wit -n attachment-filter -d http fetch-event -o attachment_filter.wasm
//
// Settings (`[plugin.settings]`), all optional:
//
//     extensions = ["exe", "js", ...]   # replaces the default list
//     also_block = ["docm"]             # added to the list
//     action = "reject"                 # or "quarantine"
//     archive_names = true              # also block "x.exe.zip"-style names

import { write as log } from "mailgate:plugin/log@0.2.0";

const DEFAULT_EXTENSIONS = [
  "ade", "adp", "app", "bat", "chm", "cmd", "com", "cpl", "dll", "exe",
  "hta", "inf", "ins", "isp", "iso", "img", "jar", "js", "jse", "lib",
  "lnk", "msc", "msi", "msp", "mst", "pif", "ps1", "reg", "scr", "sct",
  "shb", "sys", "vb", "vbe", "vbs", "vhd", "vhdx", "vxd", "wsc", "wsf",
  "wsh",
];
const ARCHIVES = new Set(["zip", "rar", "7z", "gz", "tar", "bz2", "xz"]);
const SETTINGS = new Set(["extensions", "also_block", "action", "archive_names"]);

// Set by `init`; module state lives as long as the instance.
let config = { blocked: new Set(DEFAULT_EXTENSIONS), action: "reject", archiveNames: true };

function listOfStrings(value, key) {
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string" && v !== "")) {
    throw `${key} must be a list of non-empty strings`;
  }
  return value.map((v) => v.toLowerCase().replace(/^\./, ""));
}

const cont = (modifications = []) => ({ verdict: { tag: "continue" }, modifications });

// The blocked extension a file name ends in, if any: "a.exe" -> "exe";
// with archive_names, "a.exe.zip" -> "exe" as well.
function blockedExtension(filename) {
  const parts = filename.toLowerCase().trim().replace(/[\s.]+$/, "").split(".");
  if (parts.length < 2) return undefined;
  const last = parts[parts.length - 1];
  if (config.blocked.has(last)) return last;
  if (config.archiveNames && ARCHIVES.has(last) && parts.length > 2) {
    const inner = parts[parts.length - 2];
    if (config.blocked.has(inner)) return inner;
  }
  return undefined;
}

export const hooks = {
  init(settings) {
    let given;
    try {
      given = JSON.parse(settings);
    } catch (e) {
      throw `settings are not JSON: ${e}`;
    }
    const unknown = Object.keys(given).filter((k) => !SETTINGS.has(k)).sort();
    if (unknown.length > 0) throw `unknown settings: ${unknown.join(", ")}`;
    const blocked = new Set(
      given.extensions === undefined ? DEFAULT_EXTENSIONS : listOfStrings(given.extensions, "extensions"),
    );
    if (given.also_block !== undefined) {
      for (const ext of listOfStrings(given.also_block, "also_block")) blocked.add(ext);
    }
    const action = given.action ?? "reject";
    if (action !== "reject" && action !== "quarantine") {
      throw `action must be "reject" or "quarantine", not ${JSON.stringify(action)}`;
    }
    const archiveNames = given.archive_names ?? true;
    if (typeof archiveNames !== "boolean") throw "archive_names must be true or false";
    config = { blocked, action, archiveNames };
  },

  onConnect(ctx) {
    return cont();
  },

  onHelo(ctx, name) {
    return cont();
  },

  onMail(ctx, reversePath, parameters) {
    return cont();
  },

  onRcpt(ctx, recipient, parameters) {
    return cont();
  },

  onData(ctx, message) {
    for (const part of message.parts()) {
      if (part.filename === undefined) continue;
      const ext = blockedExtension(part.filename);
      if (ext === undefined) continue;
      // Names come from the sender: keep them printable in replies and logs.
      const name = part.filename.replace(/[^\x20-\x7e]/g, "?").slice(0, 100);
      log("info", `blocked attachment "${name}" (.${ext}) from <${ctx.reversePath ?? ""}>`);
      if (config.action === "quarantine") {
        return { verdict: { tag: "quarantine", val: `attachment type .${ext}` }, modifications: [] };
      }
      return {
        verdict: {
          tag: "reject",
          val: {
            code: 550,
            enhanced: "5.7.1",
            text: `Message refused: attachments of type .${ext} are not accepted ("${name}")`,
          },
        },
        modifications: [],
      };
    }
    return cont();
  },
};
