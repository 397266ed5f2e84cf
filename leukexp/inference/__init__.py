"""Using a trained run: the classifier, `leukexp-predict`, MLflow serving, test-time views and activation maps."""
