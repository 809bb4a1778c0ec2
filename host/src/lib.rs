//! kestrel host
