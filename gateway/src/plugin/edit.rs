//! Applies the data stage's header and body modifications to a message
//! (RFC 5322 section 2.2): fields are kept whole with their folding,
//! removed by name ignoring ASCII case, added at the end of the header
//! section and folded at whitespace to stay near 78 octets a line.

use super::outcome::{HeaderField, Modification};

/// The content with the header and body modifications among `mods`
/// applied, or `None` when there are none.
pub fn rewrite(content: &[u8], mods: &[Modification]) -> Option<Vec<u8>> {
    let edits = mods.iter().any(|m| {
        matches!(
            m,
            Modification::AddHeader(_)
                | Modification::InsertHeader(..)
                | Modification::ChangeHeader(..)
                | Modification::RemoveHeader(_)
                | Modification::RemoveHeaderAt(..)
                | Modification::SetHeader(_)
                | Modification::ReplaceBody(_)
        )
    });
    if !edits {
        return None;
    }
    let (head, body) = split(content);
    let mut fields = fields(head);
    // The body is copied once, into the result, unless a plugin replaced it.
    let mut body = body;
    for m in mods {
        match m {
            Modification::AddHeader(field) => fields.push(render(field)),
            Modification::InsertHeader(index, field) => {
                let at = (*index as usize).min(fields.len());
                fields.insert(at, render(field));
            }
            Modification::ChangeHeader(index, field) => {
                let position = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| has_name(f, &field.name))
                    .nth(*index as usize)
                    .map(|(i, _)| i);
                match position {
                    Some(position) => fields[position] = render(field),
                    None => fields.push(render(field)),
                }
            }
            Modification::RemoveHeader(name) => fields.retain(|f| !has_name(f, name)),
            Modification::RemoveHeaderAt(name, index) => {
                let position = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| has_name(f, name))
                    .nth(*index as usize)
                    .map(|(i, _)| i);
                if let Some(position) = position {
                    fields.remove(position);
                }
            }
            Modification::SetHeader(field) => {
                fields.retain(|f| !has_name(f, &field.name));
                fields.push(render(field));
            }
            Modification::ReplaceBody(new) => body = new,
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(content.len() + 256);
    for field in fields {
        out.extend_from_slice(&field);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Some(out)
}

/// The header section as whole fields (each with its folding and final
/// CRLF) and the body.
pub(crate) fn fields_and_body(content: &[u8]) -> (Vec<Vec<u8>>, &[u8]) {
    let (head, body) = split(content);
    (fields(head), body)
}

/// Splits at the blank line: the header section (with its last CRLF) and
/// the body. Content without a blank line is all header section.
fn split(content: &[u8]) -> (&[u8], &[u8]) {
    if let Some(body) = content.strip_prefix(b"\r\n") {
        return (&[], body);
    }
    match content.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (&content[..end + 2], &content[end + 4..]),
        None => (content, &[]),
    }
}

/// The header section as whole fields, each with its continuation lines
/// and final CRLF.
fn fields(head: &[u8]) -> Vec<Vec<u8>> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in head.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(last) if continuation => last.extend_from_slice(line),
            _ => fields.push(line.to_vec()),
        }
    }
    fields
}

fn has_name(field: &[u8], name: &str) -> bool {
    field
        .iter()
        .position(|&b| b == b':')
        .is_some_and(|colon| field[..colon].trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

/// `Name: value` CRLF, folded before whitespace to keep lines near 78
/// octets; a value that is already folded keeps its folding.
fn render(field: &HeaderField) -> Vec<u8> {
    if field.value.contains("\r\n") {
        return format!("{}: {}\r\n", field.name, field.value.trim_start()).into_bytes();
    }
    let mut out = format!("{}:", field.name).into_bytes();
    let mut line_len = out.len();
    for (i, word) in field.value.split(' ').enumerate() {
        // Each word is written after one space; a fold puts that space at
        // the start of a continuation line.
        if i > 0 && line_len + 1 + word.len() > 78 {
            out.extend_from_slice(b"\r\n");
            line_len = 0;
        }
        out.push(b' ');
        out.extend_from_slice(word.as_bytes());
        line_len += 1 + word.len();
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] =
        b"Received: from a\r\n\tby b\r\nSubject: hi\r\nX-Internal: secret\r\nx-internal: two\r\n\r\nbody\r\n";

    fn field(name: &str, value: &str) -> HeaderField {
        HeaderField {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn no_edits_means_no_rewrite() {
        assert_eq!(
            rewrite(MESSAGE, &[Modification::SetMetadata("k".into(), "v".into())]),
            None
        );
    }

    #[test]
    fn adds_removes_and_sets_headers() {
        let out = rewrite(
            MESSAGE,
            &[
                Modification::RemoveHeader("X-INTERNAL".into()),
                Modification::AddHeader(field("X-Added", "yes")),
                Modification::SetHeader(field("Subject", "changed")),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            b"Received: from a\r\n\tby b\r\nX-Added: yes\r\nSubject: changed\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn removes_one_occurrence() {
        let out = rewrite(MESSAGE, &[Modification::RemoveHeaderAt("X-Internal".into(), 1)]).unwrap();
        assert_eq!(
            out,
            b"Received: from a\r\n\tby b\r\nSubject: hi\r\nX-Internal: secret\r\n\r\nbody\r\n"
        );
        let unchanged = rewrite(MESSAGE, &[Modification::RemoveHeaderAt("X-Internal".into(), 5)]).unwrap();
        assert_eq!(unchanged, MESSAGE);
    }

    #[test]
    fn replaces_the_body_and_keeps_headers() {
        let out = rewrite(MESSAGE, &[Modification::ReplaceBody(b"new\r\n".to_vec())]).unwrap();
        assert!(out.ends_with(b"x-internal: two\r\n\r\nnew\r\n"));
    }

    #[test]
    fn long_values_are_folded() {
        let value = "word ".repeat(40);
        let out = rewrite(
            b"A: b\r\n\r\n",
            &[Modification::AddHeader(field("X-Long", value.trim()))],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| l.len() <= 78), "{text}");
        assert!(text.contains("\r\n word"));
        let unfolded = text.replace("\r\n ", " ");
        assert!(unfolded.contains(&format!("X-Long: {}", value.trim())));
    }

    #[test]
    fn message_without_body_or_headers() {
        assert_eq!(
            rewrite(b"A: b\r\n", &[Modification::AddHeader(field("C", "d"))]).unwrap(),
            b"A: b\r\nC: d\r\n\r\n"
        );
        assert_eq!(
            rewrite(b"\r\nbody\r\n", &[Modification::AddHeader(field("C", "d"))]).unwrap(),
            b"C: d\r\n\r\nbody\r\n"
        );
    }
}
