"""Models: build.py holds the built-in architectures (mlp, cnn), user factories (`module:function`) and
the forward pass every caller uses."""
