"""Watching the farm: the metric catalogue (``names``), each worker's metrics (hung on the
worker's signals), the cluster-wide exporter, the alert rules (one definition, evaluated by
Prometheus and by `farm alerts`) and the live view (`farm top`)."""
