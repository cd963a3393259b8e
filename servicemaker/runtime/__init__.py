"""Code that runs inside Triton (copied into deployed repositories); it never imports servicemaker."""
