"""The labelled evaluation zoo: small generators and sample sets of real classes, with queries."""
