fn main() { println!("app {}", env!("CARGO_PKG_VERSION")); }
