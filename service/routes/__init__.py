"""HTTP routes, one module per area; registered in exactly one place, `app.create_app`."""
