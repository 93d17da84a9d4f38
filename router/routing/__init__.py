"""The pure routing core: policy models, features, classifier, decide/constrain, cost, latency."""
