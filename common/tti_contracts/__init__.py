"""What the operator, the server and the gateway agree on, in one place.

Standard library only, and importing none of the three: each of them imports this, so a
change to one program's internals cannot break another. The catalogue of models, the API's
names, the image formats, the error envelope and request ids, the routes the gateway
forwards and how each names its model, and the metric names the autoscaler scrapes.
"""
