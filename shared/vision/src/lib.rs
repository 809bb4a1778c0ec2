//! kestrel-vision
