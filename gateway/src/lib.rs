//! mailgate: a programmable SMTP relay gateway.

pub mod smtp;
