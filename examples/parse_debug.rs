fn main() {
    let text = std::env::args().nth(1).unwrap();
    match ialgebra::syntax::parse(&text) {
        Ok(s) => print!("{s}"),
        Err(e) => println!("{}", e.render(&text, "<arg>")),
    }
}
