"""HTTP resources: one module per resource, each a RouteTableDef of thin handlers."""
