"""What the method stands on: the shared command-line parser, file and checkpoint safety, the
restricted unpickler, the GRU kernel, the model's value rules and the release's key names. It
imports no file of the top level (the model, the data readers and the scripts import it)."""
