"""Who may do what, without I/O: principals, credentials, the acting ``Actor``, the OIDC
protocol, secret hashing."""
