//! Mails and mboxes: splitting an mbox into messages, reading a mail's
//! subject and body, decoding quoted-printable.

use super::{Line, ParseError};

/// Lines without their `\n`; a final line without newline is kept.
pub(super) fn split_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = data.strip_suffix(b"\n").unwrap_or(data);
    let empty = data.is_empty();
    trimmed.split(|&b| b == b'\n').filter(move |_| !empty)
}

/// Splits an mbox into messages at `From ` separator lines that are
/// followed by a mail header; anything else is one message.
pub(super) fn split_mbox<'a>(lines: &'a [Line<'a>]) -> Vec<&'a [Line<'a>]> {
    let is_separator = |i: usize| {
        lines[i].text.starts_with(b"From ")
            && lines
                .get(i + 1)
                .is_some_and(|next| is_header_line(&next.text))
    };
    let starts: Vec<usize> = (0..lines.len()).filter(|&i| is_separator(i)).collect();
    if starts.is_empty() {
        return vec![lines];
    }
    let mut out = Vec::new();
    // Text before the first separator (rare) is kept as its own message so a
    // diff there is not lost.
    if starts[0] > 0 {
        out.push(&lines[..starts[0]]);
    }
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        out.push(&lines[s..end]);
    }
    out
}

pub(super) fn is_header_line(text: &[u8]) -> bool {
    let Some(colon) = text.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && text[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
        && text[0].is_ascii_alphabetic()
}

/// Separates a mail's headers from its body and decodes the body; text that
/// is not a mail is returned as is.
pub(super) fn read_mail<'a>(
    name: &str,
    msg: &'a [Line<'a>],
) -> Result<(Option<String>, Vec<Line<'a>>), ParseError> {
    let mut i = 0;
    if msg.first().is_some_and(|l| l.text.starts_with(b"From ")) {
        i = 1;
    }
    if !msg.get(i).is_some_and(|l| is_header_line(&l.text)) {
        return Ok((None, msg.to_vec()));
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    while let Some(line) = msg.get(i) {
        i += 1;
        if line.text.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(&line.text).into_owned();
        if text.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
            }
        } else if let Some((k, v)) = text.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| {
        headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| v.clone())
    };
    let subject = header("subject");
    let body = &msg[i.min(msg.len())..];
    match header("content-transfer-encoding").map(|v| v.to_ascii_lowercase()) {
        Some(enc) if enc == "quoted-printable" => Ok((subject, decode_quoted_printable(body))),
        Some(enc) if enc == "base64" => Err(ParseError::Malformed {
            file: name.to_string(),
            line: msg.first().map(|l| l.no).unwrap_or(1),
            message: "the mail body is base64-encoded; save it decoded (e.g. with `b4 am`)"
                .to_string(),
        }),
        _ => Ok((subject, body.to_vec())),
    }
}

/// Decodes quoted-printable lines; a decoded line keeps the number of the
/// raw line it started on.
pub(super) fn decode_quoted_printable<'a>(body: &[Line<'a>]) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    let mut current: Option<(usize, Vec<u8>)> = None;
    for line in body {
        let (_, buf) = current.get_or_insert_with(|| (line.no, Vec::new()));
        let text: &[u8] = &line.text;
        let (text, soft) = match text.strip_suffix(b"=") {
            Some(t) => (t, true),
            None => (text, false),
        };
        let mut k = 0;
        while k < text.len() {
            if text[k] == b'=' {
                let hex = text
                    .get(k + 1..k + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    buf.push(v);
                    k += 3;
                    continue;
                }
            }
            buf.push(text[k]);
            k += 1;
        }
        if !soft {
            if let Some((no, buf)) = current.take() {
                out.push(Line {
                    no,
                    text: std::borrow::Cow::Owned(buf),
                });
            }
        }
    }
    if let Some((no, buf)) = current.take() {
        out.push(Line {
            no,
            text: std::borrow::Cow::Owned(buf),
        });
    }
    out
}
