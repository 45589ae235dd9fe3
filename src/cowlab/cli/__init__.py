"""cli: thin commands — parse arguments, call one library function, print."""
