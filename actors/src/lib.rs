pub fn app() -> colony::App { colony::App::new() }
