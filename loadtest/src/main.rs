fn main() { eprintln!("ringcast-loadtest: scenarios are built in the load-test issue"); std::process::exit(2); }
