"""tti_operator: reconciles TextToImageModel resources into GPU Deployments and Services."""
