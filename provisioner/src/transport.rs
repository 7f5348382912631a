//! (converge half: being written)
