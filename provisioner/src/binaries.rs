//! (render half: being written)
