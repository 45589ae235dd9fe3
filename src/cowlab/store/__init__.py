"""store: images, their layers (tar streams with OCI whiteouts, stored once under the state
root) and the specs that describe them."""
