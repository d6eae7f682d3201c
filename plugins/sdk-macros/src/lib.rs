//! `#[relay_plugin_sdk::plugin]`, re-exported by `relay-plugin-sdk`: exports an
//! `impl Plugin for T` block as the component's `plugin` world, and tells relay
//! (through `init`'s `hooks`) which optional hooks the block implements, so relay
//! does not call the others.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, ImplItem, ItemImpl};

/// The optional hooks and their flag in the contract's `hooks`.
const OPTIONAL: [(&str, &str); 3] = [
    ("on_event", "ON_EVENT"),
    ("on_ingress", "ON_INGRESS"),
    ("on_disconnect", "ON_DISCONNECT"),
];

/// Export an `impl Plugin for YourType { ... }` block as the plugin of this component.
///
/// Write it on the impl block itself; the hooks the block defines are the ones relay
/// calls (`on_handshake` is required; `init`, `on_event`, `on_ingress` and
/// `on_disconnect` are optional and behave as the trait's defaults when left out).
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::TokenStream::from(attr)
                .into_iter()
                .next()
                .map_or_else(proc_macro2::Span::call_site, |t| t.span()),
            "#[plugin] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let block = parse_macro_input!(item as ItemImpl);
    let is_plugin = block
        .trait_
        .as_ref()
        .and_then(|(_, path, _)| path.segments.last())
        .is_some_and(|s| s.ident == "Plugin");
    if !is_plugin {
        return syn::Error::new_spanned(
            &block.self_ty,
            "#[plugin] goes on the `impl Plugin for YourType { ... }` block",
        )
        .to_compile_error()
        .into();
    }
    let ty = &block.self_ty;
    let defined = |name: &str| {
        block
            .items
            .iter()
            .any(|i| matches!(i, ImplItem::Fn(f) if f.sig.ident == name))
    };
    let flags: Vec<_> = OPTIONAL
        .iter()
        .filter(|(hook, _)| defined(hook))
        .map(|(_, flag)| {
            let flag = syn::Ident::new(flag, proc_macro2::Span::call_site());
            quote!(::relay_plugin_sdk::Hooks::#flag)
        })
        .collect();
    let hooks = if flags.is_empty() {
        quote!(::relay_plugin_sdk::Hooks::empty())
    } else {
        quote!(#(#flags)|*)
    };
    quote! {
        #block

        #[doc(hidden)]
        struct __RelayPluginExport;

        impl ::relay_plugin_sdk::bindings::Guest for __RelayPluginExport {
            fn init(settings: String) -> Result<::relay_plugin_sdk::Hooks, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::init(&settings).map(|()| #hooks)
            }
            fn on_handshake(
                req: ::relay_plugin_sdk::HandshakeRequest,
            ) -> Result<::relay_plugin_sdk::HandshakeDecision, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::on_handshake(req)
            }
            fn on_event(
                conn: ::relay_plugin_sdk::ConnInfo,
                event: ::relay_plugin_sdk::ClientEvent,
            ) -> Result<Vec<::relay_plugin_sdk::Action>, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::on_event(conn, event)
            }
            fn on_ingress(
                req: ::relay_plugin_sdk::IngressRequest,
            ) -> Result<::relay_plugin_sdk::IngressOutcome, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::on_ingress(req)
            }
            fn on_disconnect(
                conn: ::relay_plugin_sdk::ConnInfo,
                info: ::relay_plugin_sdk::DisconnectInfo,
            ) -> Result<Vec<::relay_plugin_sdk::Action>, String> {
                <#ty as ::relay_plugin_sdk::Plugin>::on_disconnect(conn, info)
            }
        }

        ::relay_plugin_sdk::bindings::__export_plugin!(
            __RelayPluginExport with_types_in ::relay_plugin_sdk::bindings
        );
    }
    .into()
}
