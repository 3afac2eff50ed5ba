//! x
#[derive(Debug)]
pub struct MessageHandle;
