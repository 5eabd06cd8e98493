"""Functions run on the learner ranks: fn(model, batch, ...) -> loss and stats, one module per stage."""
