"""`checkpoint demo`: the whole appliance on built-in defaults, with a reference server on
127.0.0.1, a simulated camera and virtual lights."""
