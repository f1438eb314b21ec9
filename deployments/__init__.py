"""The Ray Serve application of Modelseek: ingress, encoder, aggregator, and their wiring."""
