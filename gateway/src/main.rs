fn main() { println!("gateway {}", env!("CARGO_PKG_VERSION")); }
